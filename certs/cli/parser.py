"""The argparse conventions of every `bulwark` command.

- a misspelled subcommand or flag gets a "did you mean" from difflib, from the subcommand
  that was given it (its usage, its flags), also when a required flag is missing because
  of the misspelling (`--namesapce` for `--namespace`);
- help shows each flag's default (unless the help text already names it);
- a subcommand added with only `help=` gets it as its description too.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to flags that have a meaningful default not already shown;
    never breaks a line inside a path or a flag name."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, "", [], argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})"


class BulwarkParser(argparse.ArgumentParser):
    """ArgumentParser whose errors suggest the nearest spelling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"]
        kwargs.pop("help", None)
        super().__init__(*args, **kwargs)
        self._words: list[str] = []  # what the last parse was given, for error hints

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._words = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(self._words, namespace)
        if extras and not subparsers_of(self) and _is_subcommand(self):
            # The subcommand that was given the words says so, not the top level.
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        hint = suggestion(self, message) or self._misspelled_hint(message)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")

    def _misspelled_hint(self, message: str) -> str:
        """For "arguments are required": the given flags this parser does not know, each with
        its nearest known flag (the required one was most likely misspelled)."""
        if not message.startswith("the following arguments are required"):
            return ""
        known = [f for a in self._actions for f in a.option_strings]
        hints = []
        for word in self._words:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and flag not in known:
                near = _nearest(flag, known)
                hints.append(f"; unknown {flag!r}{near}" if near else f"; unknown {flag!r}")
        return "".join(hints)


def suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """`; did you mean 'x'?` for an unknown choice or flag, or ''."""
    choice = _INVALID_CHOICE.search(message)
    if choice:
        options = [c.strip().strip("'") for c in choice.group(2).split(",")]
        return _nearest(choice.group(1), options)
    unknown = _UNRECOGNIZED.search(message)
    if unknown:
        word = unknown.group(1).split()[0].split("=")[0]
        leaf = _leaf_parser(parser, sys.argv[1:]) if parser.prog == _top_prog(parser) else parser
        flags = [f for a in leaf._actions for f in a.option_strings]
        return _nearest(word, flags)
    return ""


def _nearest(word: str, options: Sequence[str]) -> str:
    import difflib  # only on a mistake: keeps the agent's start lean

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_subcommand(parser: argparse.ArgumentParser) -> bool:
    """A parser reached through a subcommand (its prog has more words than the program's)."""
    return len(parser.prog.split()) > 1


def _top_prog(parser: argparse.ArgumentParser) -> str:
    return parser.prog.split()[0] if parser.prog else ""


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of `parser`, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each subcommand of `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: str(a.help or "") for a in action._choices_actions}
    return {}


def _leaf_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The deepest subcommand parser named by the words of `argv`."""
    current = parser
    for word in argv:
        children = subparsers_of(current)
        if word in children:
            current = children[word]
    return current


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with the words that reach it, depth first."""
    yield path, parser
    for name, child in subparsers_of(parser).items():
        yield from walk(child, (*path, name))


def fill_descriptions(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and helps.get(name):
                    child.description = str(helps[name])
                fill_descriptions(child)
