"""`bulwark token mint`: a service-account token from the CA's embedded issuer, for demos and
tests without Kubernetes."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from ca_server.options import CA_OPTIONS, ISTIO_CA_AUDIENCE
from certs.values import parse_duration

DATA_DIR = CA_OPTIONS["data_dir"]  # the same flag, variable and default as `ca serve`'s


def register(sub: Any) -> None:
    """Add `token mint` to the `bulwark` command line."""
    token = sub.add_parser(
        "token",
        help="tokens of the embedded issuer",
        description="Tokens of the CA's embedded issuer, for demos and tests without Kubernetes.",
    )
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    mint = token_sub.add_parser(
        "mint",
        help="print a service-account token signed by the embedded issuer",
        description=(
            "Print a JWT shaped like a Kubernetes projected service-account token, signed by "
            "the embedded issuer of --data-dir (created there if missing)."
        ),
    )
    DATA_DIR.add_to(mint, help="CA data directory")
    mint.add_argument(
        "--namespace", "-n", required=True, help="Kubernetes namespace of the workload"
    )
    mint.add_argument(
        "--service-account", "-s", required=True, help="service account of the workload"
    )
    mint.add_argument(
        "--audience",
        action="append",
        metavar="AUDIENCE",
        help=f"audience, repeatable (default: {ISTIO_CA_AUDIENCE})",
    )
    mint.add_argument("--ttl", default="1h", help="lifetime, a duration such as 30m, 1h30m, 3600")
    mint.add_argument("--pod-name", default="", help="pod name to embed, as Kubernetes does")
    mint.set_defaults(handler=_mint)


def _mint(args: argparse.Namespace) -> int:
    from ca_server.authn.local_issuer import LocalIssuer
    from ca_server.cli.exits import EXIT_OK, fail

    try:
        ttl = parse_duration(args.ttl, "--ttl")
        if ttl <= timedelta(0):
            raise ValueError(f"--ttl must be positive, got {args.ttl!r}")
        issuer = LocalIssuer.load_or_create(DATA_DIR.value(args))
    except ValueError as exc:
        return fail("token mint", exc)
    except OSError as exc:
        return fail("token mint", exc, fix=f"check {DATA_DIR.flag}")
    print(
        issuer.mint(
            namespace=args.namespace,
            service_account=args.service_account,
            audience=args.audience or [ISTIO_CA_AUDIENCE],
            ttl=ttl,
            pod_name=args.pod_name,
        )
    )
    return EXIT_OK
