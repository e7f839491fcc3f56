"""`bulwark`: one command line for the CA, the agent and the certificates they handle.

Each package declares its subcommands as entry points of the group `bulwark.commands` in
pyproject.toml (`NAME = "module:register"`): `register(subparsers)` adds the command NAME.
Running `bulwark NAME ...` loads only that entry point (the agent never imports the CA);
`--help`, a mistyped command and `completion` load them all. Heavy imports happen inside
the handlers so `bulwark --help` stays fast.
A user never sees a traceback for a mistake of theirs: a bad value, an unreadable
file or a refused request ends with one line naming what to fix, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from certs.cli.parser import BulwarkParser, fill_descriptions

COMMAND_GROUP = "bulwark.commands"
# The order of `bulwark --help` (entry points come sorted by name); others follow by name.
HELP_ORDER = ("ca", "token", "inspect", "cert", "certs", "kube", "agent", "completion")
EXIT_USAGE = 2
# Commands that run a server: their operators may want grpc's own log lines.
SERVERS = (("ca", "serve"), ("agent", "run"))


def quiet_grpc_core(words: Sequence[str]) -> None:
    """Keep grpc's C core from writing its own lines (`I1205 ... ssl_transport_security.cc
    ... Handshake failed`) on a command's stderr: the command reports a failure in one line
    of its own. The core reads GRPC_VERBOSITY once, when grpc is first imported, so this runs
    before any command module loads. A GRPC_VERBOSITY the user set wins; servers keep theirs."""
    if tuple(words[:2]) not in SERVERS and "grpc" not in sys.modules:  # else it is too late
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("bulwark")
    except PackageNotFoundError:
        return "unknown (not installed)"


def commands() -> list[EntryPoint]:
    """The declared commands, in `bulwark --help` order."""
    declared = sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)
    rank = {name: i for i, name in enumerate(HELP_ORDER)}
    return sorted(declared, key=lambda ep: rank.get(ep.name, len(rank)))


def load(command: EntryPoint) -> Callable[[Any], None] | None:
    """The `register` function of `command`, or None when its package is not installed."""
    try:
        register: Callable[[Any], None] = command.load()
    except ModuleNotFoundError as exc:
        module = command.module
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            return None  # that area is not installed in this build
        raise
    return register


def build_parser(
    argv: Sequence[str] | None = None, declared: Sequence[EntryPoint] | None = None
) -> argparse.ArgumentParser:
    """The `bulwark` parser; given the words of a command line that name a command, with
    that command alone (`declared`: the commands, when the caller has them already)."""
    parser = BulwarkParser(
        prog="bulwark",
        description="Bulwark: workload identity for service meshes (Istio-compatible CA and agent).",
    )
    parser.add_argument(
        "--version", action="version", version=f"bulwark {version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    declared = commands() if declared is None else declared
    named = [ep for ep in declared if argv and ep.name == argv[0]]
    for command in named or declared:
        register = load(command)
        if register is not None:
            register(sub)
    fill_descriptions(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from certs.values import InvalidValue

    words = sys.argv[1:] if argv is None else list(argv)
    quiet_grpc_core(words)
    declared = commands()  # one scan of the installed metadata (~20 ms)
    if not declared:
        print(
            f"bulwark: no commands are installed (no {COMMAND_GROUP!r} entry points): "
            "install the package, e.g. `pip install -e .` or `make venv`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        parser = build_parser(words, declared)  # flag defaults read the environment
        args = parser.parse_args(words)
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bulwark ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except InvalidValue as exc:
        print(f"bulwark: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
