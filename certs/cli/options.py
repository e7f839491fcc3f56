"""A setting given as a flag or an environment variable, written down once.

An `Option` holds everything about one setting that users see: the flag, the environment
variable, the default as a user would type it, the help and the choices. `add_to` puts it on
a parser (its default read from the environment, `--help` naming both), `value` reads the
parsed text back as the configuration's type, and `default_value` is the same conversion of
the documented default, so a configuration class takes its defaults from here and its
`--help` cannot drift from them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from certs.cli.envflags import env_bool, env_flag
from certs.values import InvalidValue, parse_duration

Convert = Callable[[Any, str], Any]  # (what argparse parsed, the setting's name) -> value


def as_is(value: Any, what: str) -> Any:
    return value


def optional_text(value: str | None, what: str) -> str | None:
    """Empty or unset means none."""
    return value or None


def path(value: str, what: str) -> Path:
    """A path that must be given: an empty one would mean the current directory."""
    if not str(value).strip():
        raise InvalidValue(what, "a path (empty would mean the current directory)", str(value))
    return Path(value)


def optional_path(value: str | None, what: str) -> Path | None:
    return Path(value) if value else None


def csv(value: str | None, what: str) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped."""
    return split_items(value, ",")


def duration(value: str, what: str) -> timedelta:
    return parse_duration(value, what)


def duration_or_never(value: str, what: str) -> timedelta | None:
    """A duration, or `never` (or empty) for none."""
    return None if value in ("", "never") else parse_duration(value, what)


def seconds(value: str, what: str) -> float:
    return parse_duration(value, what).total_seconds()


def milliseconds(value: float, what: str) -> timedelta:
    return timedelta(milliseconds=float(value))


def split_items(text: str | None, sep: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(sep) if x.strip())


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One flag with its environment variable (see the module docstring)."""

    flag: str
    env: str
    default: str | None = None  # as typed on the command line; None or "": unset
    help: str
    convert: Convert = as_is
    choices: Sequence[str] | None = None
    type: Callable[[str], Any] | None = None  # argparse's conversion (int, float, str.lower)
    early: bool = False  # convert while parsing: a bad value is a usage error
    switch: bool = False  # a flag without a value; the variable holds a boolean
    repeat: str | None = None  # repeatable; the variable separates items with this
    metavar: str | None = None
    group: str = ""  # the --help section

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def what(self) -> str:
        """The setting as error messages name it: the flag and the variable that also sets it."""
        return f"{self.flag} (env {self.env})"

    def add_to(self, parser: argparse.ArgumentParser | Any, *, help: str | None = None) -> None:
        """Add the flag to `parser` (a parser or an argument group)."""
        text = self.help if help is None else help
        if self.switch:
            parser.add_argument(
                self.flag,
                action="store_true",
                default=env_bool(self.env),
                help=f"{text} (env {self.env})",
            )
        elif self.repeat is not None:
            parser.add_argument(
                self.flag,
                action="append",
                default=list(split_items(os.environ.get(self.env), self.repeat)),
                metavar=self.metavar,
                help=f"{text} (env {self.env}, {self.repeat!r}-separated)",
            )
        else:
            extra: dict[str, Any] = {"choices": self.choices, "metavar": self.metavar}
            if self.early:
                extra["type"] = self._parse_early
            elif self.type is not None:
                extra["type"] = self.type
            env_flag(parser, self.flag, self.env, default=self.default, help=text, **extra)

    def _parse_early(self, text: str) -> Any:
        try:
            return self.convert(text, self.what)
        except InvalidValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def value(self, args: argparse.Namespace) -> Any:
        """The parsed flag (or variable, or default) as the configuration's type."""
        parsed = getattr(args, self.dest)
        if self.early or self.switch:
            return parsed
        if self.repeat is not None:
            return tuple(parsed or ())
        return self.convert(parsed, self.what)

    def parse(self, text: str | None) -> Any:
        """`text` as if a user had typed it after the flag (None: not given)."""
        if self.switch:
            return bool(text)
        if self.repeat is not None:
            return split_items(text, self.repeat)
        if text is not None and self.type is not None:
            return self.convert(self.type(text), self.what)
        return self.convert(text, self.what)

    @property
    def default_value(self) -> Any:
        """The documented default, converted: what a configuration takes as its default."""
        return self.parse(self.default)


__all__ = [
    "Option",
    "as_is",
    "csv",
    "duration",
    "duration_or_never",
    "milliseconds",
    "optional_path",
    "optional_text",
    "path",
    "seconds",
    "split_items",
]
