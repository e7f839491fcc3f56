"""`bulwark ca serve`: the flags of `ca_server.options` (each with an environment variable)
read into a `CaConfig`, and the CA run with it. `bulwark ca rotate`, `bulwark ca
intermediate` and `bulwark ca hsm` hang under the same `ca` command."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ca_server.hsm.settings import PKCS11_OPTIONS
from ca_server.kube.settings import KUBE_OPTIONS, settings_from_args
from ca_server.options import CA_OPTIONS, LOG_OPTIONS
from certs.cli.options import Option

SERVE_DESCRIPTION = (
    "Serve Istio's CreateCertificate on --grpc-addr (TLS) and metrics/health/admin API on "
    "--admin-addr. With no authenticator flags the CA trusts the embedded token issuer of "
    "--data-dir (see `bulwark token mint`). Every flag can also be set by the environment "
    "variable shown."
)


def register(sub: Any) -> None:
    """Add `ca serve|rotate|intermediate|hsm` to the `bulwark` command line."""
    from ca_server.cli.hsm import register_hsm
    from ca_server.cli.intermediate import register_intermediate
    from ca_server.cli.rotate import register_rotate

    ca = sub.add_parser(
        "ca", help="run the certificate authority", description="Certificate authority commands."
    )
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    serve = ca_sub.add_parser(
        "serve",
        help="serve IstioCertificateService/CreateCertificate over TLS",
        description=SERVE_DESCRIPTION,
    )
    add_serve_flags(serve)
    serve.set_defaults(handler=_serve)
    register_rotate(ca_sub)
    register_intermediate(ca_sub)
    register_hsm(ca_sub)


def serve_options() -> tuple[Option, ...]:
    """Every option of `ca serve` that sets the configuration, in `--help` order: the
    Kubernetes ones close the authentication section, the HSM ones come last."""
    ca_options = tuple(CA_OPTIONS.values())
    sections = list(dict.fromkeys(option.group for option in ca_options))
    ordered = (*ca_options, *KUBE_OPTIONS)
    by_section = sorted(ordered, key=lambda option: sections.index(option.group))
    return (*by_section, *PKCS11_OPTIONS)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, Any] = {}
    for option in serve_options():
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        option.add_to(groups[option.group])
    for option in LOG_OPTIONS:
        option.add_to(parser)


def config_from_args(args: argparse.Namespace) -> Any:
    """The parsed flags as a `CaConfig`: each option converted, then the values that need
    another one (federation peers need the own trust domain; Kubernetes the kubeconfig; an
    HSM key its module and PIN)."""
    from ca_server.cli.hsm import settings_from_args as pkcs11_settings
    from ca_server.config import CaConfig
    from ca_server.spiffe.federation.peers import parse_peers

    values = {name: option.value(args) for name, option in CA_OPTIONS.items()}
    if values["workers"] is None:
        del values["workers"]  # one per core
    values["federate_with"] = parse_peers(values["federate_with"], own=values["trust_domain"])
    values["kube"] = settings_from_args(args, values["kubeconfig"])
    values["pkcs11"] = pkcs11_settings(args)
    return CaConfig(**values)


def _serve(args: argparse.Namespace) -> int:
    from ca_server.logs import configure as configure_logs
    from ca_server.process.supervisor import serve
    from certs.cli.exits import fail

    level = getattr(logging, str(args.log_level).upper())
    configure_logs(level, args.log_format)
    try:
        return serve(config_from_args(args), log_level=level, log_format=args.log_format)
    except startup_errors() as exc:
        return fail("ca serve", exc)


__all__ = ["add_serve_flags", "config_from_args", "register", "serve_options"]


def startup_errors() -> tuple[type[Exception], ...]:
    """What stops `ca serve` with exit 2 and one line instead of a traceback. Each type's
    message names the file or flag and the fix; a new typed start-up error is one more entry.
    OSError covers a file the CA could not use that no check caught first."""
    from ca_server.errors import ConfigError
    from ca_server.record.ledger.integrity import RecordDamaged
    from certs.errors import InvalidSpiffeId

    return (ConfigError, RecordDamaged, InvalidSpiffeId, ValueError, OSError)
