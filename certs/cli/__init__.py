"""`bulwark`: one command line for the CA, the agent and the certificates they handle.

Each area contributes its subcommands with a `register(subparsers)` function;
heavy imports happen inside the handlers so `bulwark --help` stays fast.
A user never sees a traceback for a mistake of theirs: a bad value, an unreadable
file or a refused request ends with one line naming what to fix, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from certs.cli.parser import BulwarkParser, fill_descriptions

_COMMAND_MODULES = (
    "ca_server.cli.serve",
    "ca_server.cli.token",
    "certs.cli.inspect",
    "certs.cli.request",
    "ca_server.cli.records",
    "agent.cli.commands",
    "certs.cli.completion",
)
EXIT_USAGE = 2


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("bulwark")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = BulwarkParser(
        prog="bulwark",
        description="Bulwark: workload identity for service meshes (Istio-compatible CA and agent).",
    )
    parser.add_argument(
        "--version", action="version", version=f"bulwark {version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that area is not installed in this build
            raise
        module.register(sub)
    fill_descriptions(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from certs.values import InvalidValue

    try:
        parser = build_parser()  # flag defaults read the environment: may refuse a value
        args = parser.parse_args(argv)
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
