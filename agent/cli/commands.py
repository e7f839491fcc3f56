"""`bulwark agent run` and `bulwark agent status`; `register` plugs them into the `bulwark` CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import (
    CA_HEADER_PREFIX,
    DEFAULT_STATUS_ADDR,
    SETTINGS,
    AgentConfig,
    default_socket,
)
from agent.errors import ConfigError
from agent.logs import configure, parse_level
from certs.cli.exits import EXIT_ERROR, EXIT_NO, EXIT_OK, fail, report


def register(subparsers: Any) -> None:
    """Add `agent run` and `agent status` to the `bulwark` command line."""
    from certs.cli.output import add_output_flag

    agent = subparsers.add_parser(
        "agent",
        help="the agent: SDS + SPIFFE Workload API (per pod, or per node)",
        description=(
            "The agent: serves SDS and the SPIFFE Workload API on a unix socket, for one "
            "workload (per pod, the default) or every workload of a node (--mode node)."
        ),
    )
    commands = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    _add_run(
        commands.add_parser(
            "run",
            help="run the agent (environment as istio-agent's)",
            description=(
                "Run the agent. It reads istio-agent's environment variables; each flag "
                "overrides the variable named in its help. Durations take Go's syntax "
                "(1h30m, 500ms) plus d and w; booleans take 1/0, true/false, t/f."
            ),
        )
    )
    status = commands.add_parser(
        "status",
        help="show what a running agent serves",
        description=(
            "Fetch every resource a running agent serves over its socket (SDS and the "
            "Workload API) and show SPIFFE ID, serial and time left. Exit 1 when a resource "
            "is missing or the socket is absent."
        ),
    )
    status.add_argument(
        "--socket",
        default=f"./{default_socket()}",
        help="the agent's unix socket (where `agent run` listens unless told otherwise)",
    )
    add_output_flag(status)
    status.add_argument(
        "--resource",
        action="append",
        default=[],
        help="also show this SDS resource (file-cert:..., file-root:...)",
    )
    status.add_argument(
        "--node",
        action="store_true",
        help="a node agent (--mode node): list the identities it serves, the pods behind "
        "each and their expiries, from its status port",
    )
    status.add_argument(
        "--status-addr",
        default=DEFAULT_STATUS_ADDR,
        help="with --node: the node agent's status address (default: %(default)s)",
    )
    status.set_defaults(handler=status_command)


def _add_run(parser: argparse.ArgumentParser) -> None:
    """One flag per row of `agent.config.SETTINGS` that has one; the other rows in the epilog."""
    for setting in SETTINGS:
        if setting.flag:
            parser.add_argument(setting.flag, help=setting.help())
    parser.epilog = "Set by the environment only: " + " ".join(
        f"{setting.help()}." for setting in SETTINGS if not setting.flag
    )
    parser.add_argument(
        "--ca-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"extra CA request header, as {CA_HEADER_PREFIX}<NAME>",
    )
    parser.set_defaults(handler=run_command)


def config_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AgentConfig:
    """The configuration of `env` (the process environment when None) with the given flags."""
    given = {
        setting.flag: value
        for setting in SETTINGS
        if setting.flag and (value := getattr(args, _dest(setting.flag))) is not None
    }
    return AgentConfig.from_env(env, flags=given, ca_headers=args.ca_header)


def _dest(flag: str) -> str:
    """The attribute argparse stores `--a-flag` under."""
    return flag.removeprefix("--").replace("-", "_")


PATH_SETTINGS = "check --socket, --ready-file, OUTPUT_CERTS, PROV_CERT and the token path"


def run_command(args: argparse.Namespace) -> int:
    from agent.runtime import run_agent

    try:
        config = config_from(args)
    except ConfigError as exc:
        return fail("agent", exc.public_message)
    configure(parse_level(config.log_level), config.log_format)
    code = EXIT_ERROR
    try:
        code = run_agent(config)
    except* OSError as group:  # a path the agent cannot use: one line each, no traceback
        for failure in group.exceptions:
            report("agent", failure, PATH_SETTINGS)
    return code


def status_command(args: argparse.Namespace) -> int:
    from agent.cli.status import format_report, inspect_agent
    from certs.cli.output import emit

    if args.node:
        return node_status_command(args)

    if not Path(args.socket).exists():
        report(
            "agent status",
            f"no socket at {args.socket}: is the agent running? "
            "(pass --socket, or run where the agent runs)",
        )
        return EXIT_NO
    served = inspect_agent(args.socket, args.resource)
    emit(served, args.output, lambda: print(format_report(served)))
    ok = all(r["status"] == "ACTIVE" for r in served["resources"])
    return EXIT_OK if ok else EXIT_NO


def node_status_command(args: argparse.Namespace) -> int:
    from agent.cli.node_status import (
        NodeStatusError,
        all_served,
        fetch_node_status,
        format_node_status,
    )
    from certs.cli.output import emit

    try:
        document = fetch_node_status(args.status_addr)
    except NodeStatusError as exc:
        print(f"bulwark agent status: {exc}", file=sys.stderr)
        return 1
    emit(document, args.output, lambda: print(format_node_status(document)))
    return 0 if all_served(document) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agent [flags]`: `bulwark agent run`; `python -m agent status ...` also works."""
    from certs.cli.parser import BulwarkParser

    parser = BulwarkParser(prog="python -m")  # usage reads "python -m agent run"
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in ("run", "status"):
        args_list.insert(0, "run")
    args = parser.parse_args(["agent", *args_list])
    return int(args.handler(args))
