"""`bulwark token mint`: a service-account token from the CA's embedded issuer, for demos and
tests without Kubernetes.

It mints only from a data dir that already has an issuer (the CA makes one at start), unless
`--init` asks for a new one: a token of a new issuer is one no running CA trusts. Before it
prints the token it warns (on stderr) when the CA would refuse it: a lifetime beyond the
CA's `--max-token-lifetime`, an audience it does not accept, or a CA that does not trust
the embedded issuer (what the data dir's CA recorded at its last start, else the defaults).
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from ca_server.options import CA_OPTIONS, ISTIO_CA_AUDIENCE
from certs.values import duration_like, parse_duration

DATA_DIR = CA_OPTIONS["data_dir"]  # the same flag, variable and default as `ca serve`'s
MAX_LIFETIME = CA_OPTIONS["max_token_lifetime"]


class NoIssuer(ValueError):
    """The data dir has no embedded issuer and `--init` was not given."""


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
            "the embedded issuer of --data-dir (the one `bulwark ca serve --data-dir` creates; "
            "--init creates it in a data dir whose CA has not started yet). Warns when the "
            "CA would refuse the token."
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
    mint.add_argument(
        "--init",
        action="store_true",
        help="create the embedded issuer in --data-dir when it has none (for a CA started later)",
    )
    mint.set_defaults(handler=_mint)


def _mint(args: argparse.Namespace) -> int:
    from ca_server.authn.local_issuer import LocalIssuer
    from certs.cli.exits import EXIT_OK, fail

    try:
        data_dir = DATA_DIR.value(args)
        ttl = parse_duration(args.ttl, "--ttl")
        if ttl <= timedelta(0):
            raise ValueError(f"--ttl must be positive, got {args.ttl!r}")
        if not args.init:
            check_has_issuer(data_dir)
        issuer = LocalIssuer.load_or_create(data_dir)
    except ValueError as exc:
        return fail("token mint", exc)
    except OSError as exc:
        return fail("token mint", exc, fix=f"check {DATA_DIR.flag}")
    audiences = args.audience or [ISTIO_CA_AUDIENCE]
    for warning in refusal_warnings(data_dir, args.ttl, ttl, audiences):
        print(f"bulwark token mint: warning: {warning}", file=sys.stderr)
    print(
        issuer.mint(
            namespace=args.namespace,
            service_account=args.service_account,
            audience=audiences,
            ttl=ttl,
            pod_name=args.pod_name,
        )
    )
    return EXIT_OK


def check_has_issuer(data_dir: Path) -> None:
    """`NoIssuer` unless `data_dir` holds the embedded issuer's key (a file in the way is left
    to the issuer's own error, which names it)."""
    from ca_server.authn.local_issuer import ISSUER_DIR, KEY_FILE, read_token_policy
    from certs.istio_files import ROOT_CERT

    if (data_dir / ISSUER_DIR / KEY_FILE).exists() or (data_dir.exists() and not data_dir.is_dir()):
        return
    where = f"{DATA_DIR.flag} {data_dir}"
    if not ((data_dir / ROOT_CERT).exists() or (data_dir / "ca").is_dir()):
        raise NoIssuer(
            f"{where} holds no CA and no token issuer: a token minted there would be signed by "
            f"a new key that no running CA trusts. Pass the --data-dir of `bulwark ca serve` "
            f"(env {DATA_DIR.env}), or --init to create the issuer for a CA you will start there"
        )
    policy = read_token_policy(data_dir)
    ran = "ran" if policy is not None else "probably ran"
    raise NoIssuer(
        f"the CA of {where} has no embedded token issuer: it {ran} with --jwt-issuer, "
        "--jwks-file or --kubeconfig and trusts those tokens, not this command's. Use a token of "
        "the issuer it trusts, or --init to create the issuer (the CA trusts it once started "
        "without those flags)"
    )


def refusal_warnings(
    data_dir: Path, ttl_text: str, ttl: timedelta, audiences: list[str]
) -> list[str]:
    """Why the CA of `data_dir` would refuse the token, as far as this command can tell."""
    from ca_server.authn.local_issuer import read_token_policy

    policy = read_token_policy(data_dir)
    warnings = []
    if policy is not None and not policy.embedded_issuer:
        warnings.append(
            f"the CA of {data_dir} last started with another token issuer (--jwt-issuer, "
            "--jwks-file or --kubeconfig): it will refuse tokens of the embedded issuer"
        )
    if policy is not None:
        limit = policy.max_token_lifetime_s
        whose = f"the {MAX_LIFETIME.flag} the CA of {data_dir} last started with"
    else:
        limit = MAX_LIFETIME.default_value.total_seconds()
        whose = (
            f"the CA's default {MAX_LIFETIME.flag} ({data_dir} records no CA settings yet; "
            "a CA started with a longer one accepts it)"
        )
    if ttl.total_seconds() > limit:
        most = duration_like(limit, ttl_text)
        warnings.append(
            f"--ttl {ttl_text} is longer than {most}, {whose}: the CA will refuse this token. "
            f"Mint it with --ttl {most} or less, or start the CA with "
            f"{MAX_LIFETIME.flag} {ttl_text}"
        )
    if policy is not None and not set(audiences) & set(policy.audiences):
        warnings.append(
            f"the CA of {data_dir} accepts the audiences {', '.join(policy.audiences)} "
            f"(its --audiences), none of {', '.join(audiences)}: it will refuse this token"
        )
    return warnings
