"""`bulwark agent run` and `bulwark agent status`; `register` plugs them into the `bulwark` CLI."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, parse_bool, parse_duration, parse_mode
from agent.errors import ConfigError
from agent.logs import FORMATS, configure, parse_level
from certs import istio_files

# flag -> (AgentConfig field, converter); each overrides the env var of the same meaning
_OVERRIDES: dict[str, tuple[str, Any]] = {
    "trust_domain": ("trust_domain", str),
    "namespace": ("namespace", str),
    "service_account": ("service_account", str),
    "ca_addr": ("ca_addr", str),
    "mtls_ca_addr": ("mtls_ca_addr", str),
    "ca_root_ca": ("ca_root_ca", Path),
    "istiod_san": ("istiod_san", str),
    "prov_cert": ("prov_cert_dir", Path),
    "output_certs": ("output_certs_dir", Path),
    "file_mounted_certs": ("file_mounted_certs", lambda v: parse_bool(v, "--file-mounted-certs")),
    "file_mounted_dir": ("file_mounted_dir", Path),
    "secret_ttl": ("secret_ttl", lambda v: parse_duration(v, "--secret-ttl")),
    "grace_ratio": ("grace_ratio", float),
    "grace_jitter": ("grace_jitter", float),
    "rsa_key_size": ("rsa_key_size", int),
    "ecc_signature_algorithm": ("ecc_signature_algorithm", str),
    "ecc_curve": ("ecc_curve", str),
    "cluster_id": ("cluster_id", str),
    "cert_signer": ("cert_signer", str),
    "socket": ("socket_path", Path),
    "token_path": ("token_path", Path),
    "status_addr": ("status_addr", str),
    "ready_file": ("ready_file", Path),
    "file_poll_interval": (
        "file_poll_interval",
        lambda v: parse_duration(v, "--file-poll-interval"),
    ),
    "ca_request_timeout": (
        "ca_request_timeout",
        lambda v: parse_duration(v, "--ca-request-timeout"),
    ),
    "socket_mode": ("socket_mode", lambda v: parse_mode(v, "--socket-mode")),
    "socket_group": ("socket_group", str),
    "file_resource_max_bytes": ("file_resource_max_bytes", int),
}
_KEY, _CHAIN, _ROOT = istio_files.KEY, istio_files.CERT_CHAIN, istio_files.ROOT_CERT
_HELP = {
    "trust_domain": "TRUST_DOMAIN (cluster.local)",
    "namespace": "POD_NAMESPACE",
    "service_account": "SERVICE_ACCOUNT",
    "ca_addr": "CA_ADDR (istiod.istio-system.svc:15012)",
    "mtls_ca_addr": "BULWARK_MTLS_CA_ADDR: the CA's client-certificate port, used while PROV_CERT is valid",
    "ca_root_ca": "CA_ROOT_CA: root that verifies the CA (SYSTEM for system roots)",
    "istiod_san": "ISTIOD_SAN: name the CA certificate must carry",
    "prov_cert": f"PROV_CERT: directory with {_CHAIN}, {_KEY}, {_ROOT} for mTLS",
    "output_certs": f"OUTPUT_CERTS: directory to write {_KEY}, {_CHAIN}, {_ROOT}",
    "file_mounted_certs": "FILE_MOUNTED_CERTS: serve ./etc/certs instead of asking a CA",
    "file_mounted_dir": "directory of FILE_MOUNTED_CERTS (./etc/certs)",
    "secret_ttl": "SECRET_TTL (24h)",
    "grace_ratio": "SECRET_GRACE_PERIOD_RATIO (0.5)",
    "grace_jitter": "SECRET_GRACE_PERIOD_RATIO_JITTER (0.01)",
    "rsa_key_size": "WORKLOAD_RSA_KEY_SIZE (2048)",
    "ecc_signature_algorithm": "ECC_SIGNATURE_ALGORITHM (ECDSA for EC keys)",
    "ecc_curve": "ECC_CURVE (P256 or P384)",
    "cluster_id": "ISTIO_META_CLUSTER_ID (Kubernetes)",
    "cert_signer": "ISTIO_META_CERT_SIGNER",
    "socket": "socket path (./var/run/secrets/workload-spiffe-uds/$WORKLOAD_IDENTITY_SOCKET_FILE)",
    "token_path": "BULWARK_TOKEN_PATH (./var/run/secrets/tokens/istio-token)",
    "status_addr": "BULWARK_AGENT_STATUS_ADDR (127.0.0.1:15020; empty disables)",
    "ready_file": "BULWARK_AGENT_READY_FILE: JSON with socket and status address once serving",
    "file_poll_interval": "how often watched files are checked (1s)",
    "ca_request_timeout": "deadline of one CSR attempt (10s)",
    "socket_mode": "BULWARK_SOCKET_MODE: 0600 (default) or 0660 to let --socket-group connect",
    "socket_group": "BULWARK_SOCKET_GROUP: group (name or gid) of the socket and its directory",
    "file_resource_max_bytes": "BULWARK_FILE_RESOURCE_MAX_BYTES: largest file-cert/file-root "
    "file served (1048576)",
}


def register(subparsers: Any) -> None:
    """Add `agent run` and `agent status` to the `bulwark` command line."""
    from certs.cli.output import add_output_flag

    agent = subparsers.add_parser(
        "agent",
        help="the per-pod agent: SDS + SPIFFE Workload API",
        description="The per-pod agent: serves SDS and the SPIFFE Workload API on a unix socket.",
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
    status.set_defaults(handler=status_command)


def default_socket() -> Path:
    """Where `agent run` listens when neither --socket nor the environment says otherwise."""
    from agent.config import DEFAULT_SOCKET_FILE, SOCKET_DIR

    name = os.environ.get("WORKLOAD_IDENTITY_SOCKET_FILE") or DEFAULT_SOCKET_FILE
    return SOCKET_DIR / name


def _add_run(parser: argparse.ArgumentParser) -> None:
    for flag in _OVERRIDES:
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, help=_HELP[flag])
    parser.add_argument(
        "--ca-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra CA request header, as CA_HEADER_<NAME>",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("BULWARK_LOG_LEVEL", "info"),
        help="BULWARK_LOG_LEVEL: debug, info, warn, error (info)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("BULWARK_LOG_FORMAT", "text"),
        help="BULWARK_LOG_FORMAT: text or json, one event per line (text)",
    )
    parser.set_defaults(handler=run_command)


def config_from(args: argparse.Namespace, env: dict[str, str]) -> AgentConfig:
    """The environment's configuration with every given flag applied on top."""
    config = AgentConfig.from_env(env)
    changes: dict[str, Any] = {}
    for flag, (field, convert) in _OVERRIDES.items():
        value = getattr(args, flag)
        if value is None:
            continue
        try:
            changes[field] = convert(value)
        except ValueError as exc:
            raise ConfigError(f"--{flag.replace('_', '-')} {value!r}: {exc}") from None
    headers = list(config.ca_headers)
    for item in args.ca_header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--ca-header {item!r} must be NAME=VALUE")
        headers.append((name.lower(), value))
    if args.ca_header:
        changes["ca_headers"] = tuple(headers)
    return dataclasses.replace(config, **changes)


def run_command(args: argparse.Namespace) -> int:
    from agent.runtime import run_agent

    try:
        try:
            level = parse_level(args.log_level)
        except ValueError as exc:
            raise ConfigError(f"--log-level: {exc}") from None
        if args.log_format not in FORMATS:
            raise ConfigError(f"--log-format {args.log_format!r} must be text or json")
        configure(level, args.log_format)
        config = config_from(args, dict(os.environ))
    except ConfigError as exc:
        print(f"bulwark agent: {exc.public_message}", file=sys.stderr)
        return 2
    code = 2
    try:
        code = run_agent(config)
    except* OSError as group:  # a path the agent cannot use: one line each, no traceback
        for failure in group.exceptions:
            print(f"bulwark agent: {_os_error(failure)}", file=sys.stderr)
    return code


def _os_error(exc: BaseException) -> str:
    """A file-system failure as one line: the path, the reason, the settings that name paths."""
    if not isinstance(exc, OSError):
        return str(exc)
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        reason = "a file is in the way where a directory is needed"
    return (
        f"cannot use {exc.filename or 'a path'}: {reason} (check --socket, --ready-file, "
        "OUTPUT_CERTS, PROV_CERT and the token path)"
    )


def status_command(args: argparse.Namespace) -> int:
    from agent.cli.status import format_report, inspect_agent
    from certs.cli.output import emit

    if not Path(args.socket).exists():
        print(
            f"bulwark agent status: no socket at {args.socket}: is the agent running? "
            "(pass --socket, or run where the agent runs)",
            file=sys.stderr,
        )
        return 1
    report = asyncio.run(inspect_agent(args.socket, args.resource))
    emit(report, args.output, lambda: print(format_report(report)))
    ok = all(r["status"] == "ACTIVE" for r in report["resources"])
    return 0 if ok else 1


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
