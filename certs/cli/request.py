"""`bulwark cert request`: a certificate by hand, for a VM or to debug, as istio-agent gets one.

Makes a key and CSR, calls Istio's CreateCertificate with a token file (the CA's TLS port)
or with the current certificate (renewal over the CA's mTLS port), verifies the answer
against the root, and writes `cert-chain.pem`, `key.pem` (0600) and `root-cert.pem`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certs.cli import request_flow
from certs.cli.envflags import env_flag
from certs.cli.output import add_output_flag, emit
from certs.cli.request_flow import RequestError
from certs.errors import CertsError
from certs.istio_files import CERT_CHAIN, KEY, ROOT_CERT
from certs.keys import KeyType
from certs.values import parse_duration, parse_host_port

DEFAULT_SERVER_NAME = "istiod.istio-system.svc"


def register(sub: Any) -> None:
    cert = sub.add_parser(
        "cert",
        help="obtain a workload certificate by hand",
        description="Obtain a workload certificate from a Bulwark or Istio CA by hand.",
    )
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="COMMAND", required=True)
    p = cert_sub.add_parser(
        "request",
        help=f"make a key and CSR, get it signed, write {CERT_CHAIN}/{KEY}/{ROOT_CERT}",
        description=(
            "Make a key and CSR for a SPIFFE ID, ask the CA's CreateCertificate for it, verify "
            f"the answer against --root and write {CERT_CHAIN}, {KEY} (0600) and "
            f"{ROOT_CERT} to --out. Authenticate with --token-file (a service-account token, "
            f"on the CA's TLS port) or --renew-from DIR holding the current {CERT_CHAIN} and "
            f"{KEY} (on the CA's mTLS port). Exit 2 when no certificate was written."
        ),
    )
    env_flag(p, "--ca-addr", "CA_ADDR", default="127.0.0.1:15012", help="the CA's gRPC address")
    env_flag(
        p, "--root", "CA_ROOT_CA", help="root certificate(s) that verify the CA (PEM); required"
    )
    env_flag(
        p,
        "--server-name",
        "ISTIOD_SAN",
        default=DEFAULT_SERVER_NAME,
        help="a DNS name the CA's certificate carries",
    )
    auth = p.add_mutually_exclusive_group(required=True)
    auth.add_argument("--token-file", help="service-account token (JWT) to authenticate with")
    auth.add_argument(
        "--renew-from",
        metavar="DIR",
        help=f"directory with the current {CERT_CHAIN} and {KEY} (renewal over mTLS)",
    )
    p.add_argument(
        "--spiffe-id",
        help="identity to ask for (default: from --namespace/--service-account, or the current certificate)",
    )
    p.add_argument("--trust-domain", default="cluster.local", help="trust domain of the SPIFFE ID")
    p.add_argument("--namespace", "-n", help="Kubernetes namespace of the identity")
    p.add_argument("--service-account", "-s", help="service account of the identity")
    p.add_argument("--ttl", default="24h", help="certificate lifetime asked for (a duration)")
    p.add_argument(
        "--key-type",
        choices=[k.value for k in KeyType if k is not KeyType.ED25519],
        default=KeyType.EC_P256.value,
        help="workload key algorithm",
    )
    p.add_argument("--out", default=".", help="directory to write the three files to")
    add_output_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = request(args, now=datetime.now(UTC))
    except CertsError as exc:  # RequestError, InvalidValue, a bad SPIFFE ID or PEM
        print(f"bulwark cert request: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = exc.filename or ""
        print(f"bulwark cert request: cannot use {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    emit(result, args.output, lambda: _print_human(result))
    return 0


def _print_human(result: dict[str, Any]) -> None:
    print(f"{result['spiffe_id']}  serial {result['serial']}  ({result['time_left']} left)")
    for name in ("cert_chain", "key", "root_cert"):
        print(f"  wrote {result['files'][name]}")


def request(args: argparse.Namespace, *, now: datetime) -> dict[str, Any]:
    """Obtain, verify and write the certificate; the summary printed afterwards."""
    parse_host_port(args.ca_addr, "--ca-addr (env CA_ADDR)", allow_port_zero=False)
    ttl = parse_duration(args.ttl, "--ttl")
    if ttl < timedelta(seconds=1):
        raise RequestError(f"--ttl must be at least 1s, got {args.ttl!r}")
    if not args.root:
        raise RequestError("--root (env CA_ROOT_CA) is required: the root that verifies the CA")
    return request_flow.obtain(
        request_flow.Plan(
            ca_addr=args.ca_addr,
            root=Path(args.root),
            server_name=args.server_name,
            token_file=Path(args.token_file) if args.token_file else None,
            renew_from=Path(args.renew_from) if args.renew_from else None,
            spiffe_id=args.spiffe_id,
            trust_domain=args.trust_domain,
            namespace=args.namespace,
            service_account=args.service_account,
            ttl=ttl,
            ttl_text=args.ttl,
            key_type=KeyType(args.key_type),
            out=Path(args.out),
        ),
        now=now,
    )
