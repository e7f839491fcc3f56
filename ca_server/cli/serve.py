"""`bulwark ca serve` and `bulwark token mint`: flags (each with an environment variable) to `CaConfig`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from certs.cli.envflags import env_bool, env_flag
from certs.values import parse_duration


def register(sub: Any) -> None:
    ca = sub.add_parser(
        "ca", help="run the certificate authority", description="Certificate authority commands."
    )
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    serve = ca_sub.add_parser(
        "serve",
        help="serve IstioCertificateService/CreateCertificate over TLS",
        description=(
            "Serve Istio's CreateCertificate on --grpc-addr (TLS) and metrics/health/admin API on "
            "--admin-addr. With no authenticator flags the CA trusts the embedded token issuer of "
            "--data-dir (see `bulwark token mint`). Every flag can also be set by the environment "
            "variable shown."
        ),
    )
    _serve_flags(serve)
    serve.set_defaults(handler=_serve)
    from ca_server.cli.intermediate import register_intermediate
    from ca_server.cli.rotate import register_rotate

    register_rotate(ca_sub)
    register_intermediate(ca_sub)

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
    env_flag(mint, "--data-dir", "BULWARK_DATA_DIR", default="./.bulwark", help="CA data directory")
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
        help=f"audience, repeatable (default: {DEFAULT_MINT_AUDIENCE})",
    )
    mint.add_argument("--ttl", default="1h", help="lifetime, a duration such as 30m, 1h30m, 3600")
    mint.add_argument("--pod-name", default="", help="pod name to embed, as Kubernetes does")
    mint.set_defaults(handler=_mint)


DEFAULT_MINT_AUDIENCE = "istio-ca"
LOG_LEVELS = ("debug", "info", "warning", "error")

# (flag, environment variable, default, help, extra argparse keywords), grouped for --help.
_FlagSpec = tuple[str, str, Any, str, dict[str, Any]]
_SERVE_FLAGS: tuple[tuple[str, tuple[_FlagSpec, ...]], ...] = (
    ("where it listens and keeps state", (
        ("--data-dir", "BULWARK_DATA_DIR", "./.bulwark", "state directory (CA key 0600, root-cert.pem, record)", {}),
        ("--grpc-addr", "BULWARK_GRPC_ADDR", "127.0.0.1:15012", "gRPC TLS address (token authentication)", {}),
        ("--mtls-grpc-addr", "BULWARK_MTLS_GRPC_ADDR", "127.0.0.1:15013", "gRPC address for renewal with a client certificate (required there); empty disables", {}),
        ("--admin-addr", "BULWARK_ADMIN_ADDR", "127.0.0.1:15014", "admin HTTP address (/metrics, /healthz, /readyz, /v1)", {}),
        ("--admin-token-file", "BULWARK_ADMIN_TOKEN_FILE", None, "bearer token file for the admin API (required when not on loopback)", {}),
        ("--ready-file", "BULWARK_READY_FILE", None, "write JSON with the bound addresses here once serving", {}),
    )),
    ("CA material", (
        ("--trust-domain", "TRUST_DOMAIN", "cluster.local", "SPIFFE trust domain", {}),
        ("--cacerts-dir", "BULWARK_CACERTS_DIR", None, "plugged-in CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem or tls.crt, tls.key, ca.crt)", {}),
        ("--server-dns-names", "BULWARK_SERVER_DNS_NAMES", "istiod.istio-system.svc", "comma-separated DNS SANs of the CA's serving certificate", {}),
        ("--material-check-interval", "BULWARK_MATERIAL_CHECK_INTERVAL", "10s", "how often plugged-in CA files are re-read and self-signed root renewal is checked", {}),
        ("--ca-rotation", "BULWARK_CA_ROTATION", "same-key", "same-key: renew the root with its key, swap plugged-in files at once; new-key: prepared/active/retired CA slots (docs/ROTATION.md)", {"choices": ["same-key", "new-key"]}),
        ("--ca-prepare-at", "BULWARK_CA_PREPARE_AT", 0.8, "new-key: prepare the next root at this fraction of the active root's life", {"type": float}),
        ("--ca-propagation-delay", "BULWARK_CA_PROPAGATION_DELAY", "24h", "new-key: a prepared CA is in the bundle this long before it signs", {}),
    )),
    ("authentication (none given: the embedded token issuer of --data-dir)", (
        ("--jwks-file", "BULWARK_JWKS_FILE", None, "static JWKS of the token issuer (needs --jwt-issuer)", {}),
        ("--jwt-issuer", "BULWARK_JWT_ISSUER", None, "expected token `iss`; alone, its OIDC discovery document gives the keys", {}),
        ("--audiences", "TOKEN_AUDIENCES", "istio-ca", "comma-separated accepted token audiences", {}),
        ("--kubeconfig", "KUBECONFIG", None, "use Kubernetes (TokenReview, CA Secret, root ConfigMaps)", {}),
        ("--token-clock-skew", "BULWARK_TOKEN_CLOCK_SKEW", "60s", "leeway for token exp/nbf/iat against this host's clock", {}),
        ("--max-token-lifetime", "BULWARK_MAX_TOKEN_LIFETIME", "24h", "refuse JWTs whose exp lies further than this after iat", {}),
    )),
    ("issuance policy", (
        ("--csr-san-policy", "BULWARK_CSR_SAN_POLICY", "strict", "strict: reject CSRs asking for another identity; override: Istio's behaviour", {"choices": ["strict", "override"]}),
        ("--max-workload-cert-ttl", "MAX_WORKLOAD_CERT_TTL", "2160h", "longest certificate TTL a caller may ask for", {}),
        ("--default-workload-cert-ttl", "DEFAULT_WORKLOAD_CERT_TTL", "24h", "TTL when the request asks for none", {}),
        ("--trusted-node-accounts", "CA_TRUSTED_NODE_ACCOUNTS", "", "comma-separated NS/SA allowed to use ImpersonatedIdentity for service accounts with a pod on their node (Kubernetes)", {}),
        ("--node-identity-policy", "BULWARK_NODE_IDENTITY_POLICY", None, "YAML file mapping node accounts NS/SA to the NS/SA patterns each may impersonate, e.g. {\"bulwark-system/node-agent\": [\"demo/*\"]}; without Kubernetes, impersonation needs it", {}),
    )),
    ("JWT-SVIDs, bundle endpoint, federation (docs/JWT-SVID.md)", (
        ("--jwt-svid-ttl", "BULWARK_JWT_SVID_TTL", "5m", "JWT-SVID lifetime when MintJWTSVID asks for none", {}),
        ("--jwt-svid-max-ttl", "BULWARK_JWT_SVID_MAX_TTL", "1h", "longest JWT-SVID lifetime (longer requests are capped)", {}),
        ("--jwt-key-active-life", "BULWARK_JWT_KEY_ACTIVE_LIFE", "24h", "how long one JWT signing key signs; the next is published at half of it", {}),
        ("--bundle-endpoint-addr", "BULWARK_BUNDLE_ENDPOINT_ADDR", None, "serve the SPIFFE bundle endpoint (HTTPS) here; off when unset", {}),
        ("--bundle-endpoint-profile", "BULWARK_BUNDLE_ENDPOINT_PROFILE", "https_spiffe", "https_spiffe: present an X.509-SVID spiffe://TD/bulwark/bundle-endpoint; https_web: --bundle-endpoint-cert/--bundle-endpoint-key", {"choices": ["https_spiffe", "https_web"]}),
        ("--bundle-endpoint-cert", "BULWARK_BUNDLE_ENDPOINT_CERT", None, "https_web: PEM certificate chain the bundle endpoint presents", {}),
        ("--bundle-endpoint-key", "BULWARK_BUNDLE_ENDPOINT_KEY", None, "https_web: PEM private key of that certificate", {}),
    )),
    ("capacity", (
        ("--workers", "BULWARK_WORKERS", None, "gRPC worker processes (default: one per core)", {"type": int}),
        ("--max-concurrent-rpcs", "BULWARK_MAX_CONCURRENT_RPCS", 2000, "per worker; beyond it callers get RESOURCE_EXHAUSTED", {"type": int}),
        ("--batch-max-certificates", "BULWARK_BATCH_MAX_CERTIFICATES", 64, "most certificate requests one BatchCreateCertificates call may carry", {"type": int}),
    )),
    ("issuance record", (
        ("--record", "BULWARK_RECORD", None, "record URL: sqlite:///PATH or postgresql://... (default: SQLite in the data dir)", {}),
        ("--record-retention", "BULWARK_RECORD_RETENTION", "30d", "prune rows whose certificate expired longer ago than this; 'never' keeps all", {}),
        ("--record-max-batch", "BULWARK_RECORD_MAX_BATCH", 256, "most certificates one commit groups; 1 turns group commit off", {"type": int}),
        ("--record-linger-ms", "BULWARK_RECORD_LINGER_MS", 5.0, "while commits follow each other, wait this long before the next one so it carries more certificates (an idle CA commits at once)", {"type": float}),
    )),
)  # fmt: skip


def _serve_flags(p: argparse.ArgumentParser) -> None:
    for title, specs in _SERVE_FLAGS:
        group = p.add_argument_group(title)
        for flag, env, default, text, extra in specs:
            env_flag(group, flag, env, default=default, help=text, **extra)
        if title.startswith("authentication"):
            from ca_server.kube.settings import add_flags as add_kube_flags

            add_kube_flags(group)
        if title == "issuance record":
            group.add_argument(
                "--record-continue-after-damage",
                action="store_true",
                default=env_bool("BULWARK_RECORD_CONTINUE_AFTER_DAMAGE"),
                help="on a damaged or missing record, continue on a new segment that records"
                " the break instead of refusing to start",
            )
        if title.startswith("JWT-SVIDs"):
            group.add_argument(
                "--federate-with",
                action="append",
                default=list(_csv_items(os.environ.get("BULWARK_FEDERATE_WITH", ""), ";")),
                metavar="TD=URL[,profile=P][,bundle=FILE][,endpoint-spiffe-id=ID]",
                help="federate with a foreign trust domain, repeatable (env BULWARK_FEDERATE_WITH, "
                "';'-separated); https_spiffe (the default) needs bundle=FILE",
            )
        if title == "issuance policy":
            group.add_argument(
                "--allow-ed25519",
                action="store_true",
                default=env_bool("BULWARK_ALLOW_ED25519"),
                help="accept Ed25519 workload keys (env BULWARK_ALLOW_ED25519)",
            )
    env_flag(
        p,
        "--log-level",
        "BULWARK_LOG_LEVEL",
        default="info",
        choices=LOG_LEVELS,
        type=str.lower,
        help="log verbosity",
    )
    env_flag(
        p,
        "--log-format",
        "BULWARK_LOG_FORMAT",
        default="text",
        choices=["text", "json"],
        help="log line format",
    )


def _what(flag: str) -> str:
    """A flag as error messages name it: with the environment variable that also sets it."""
    for _title, specs in _SERVE_FLAGS:
        for spec_flag, env, *_rest in specs:
            if spec_flag == flag:
                return f"{flag} (env {env})"
    return flag


def _duration(args: argparse.Namespace, flag: str) -> timedelta:
    return parse_duration(getattr(args, flag[2:].replace("-", "_")), _what(flag))


def _csv(text: str | None) -> tuple[str, ...]:
    return _csv_items(text, ",")


def _csv_items(text: str | None, sep: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(sep) if x.strip())


def config_from_args(args: argparse.Namespace) -> Any:
    from ca_server.config import CaConfig
    from ca_server.kube.settings import settings_from_args
    from certs.spiffe_id import TrustDomain

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    extra: dict[str, Any] = _jwt_and_federation(args)
    if args.workers is not None:
        extra["workers"] = int(args.workers)
    return CaConfig(
        data_dir=Path(args.data_dir),
        trust_domain=TrustDomain(args.trust_domain),
        grpc_addr=args.grpc_addr,
        admin_addr=args.admin_addr,
        mtls_grpc_addr=args.mtls_grpc_addr or None,
        cacerts_dir=path(args.cacerts_dir),
        jwks_file=path(args.jwks_file),
        jwt_issuer=args.jwt_issuer or None,
        audiences=_csv(args.audiences),
        token_clock_skew=parse_duration(args.token_clock_skew),
        max_token_lifetime=parse_duration(args.max_token_lifetime),
        csr_san_policy=args.csr_san_policy,
        server_dns_names=_csv(args.server_dns_names),
        default_ttl=_duration(args, "--default-workload-cert-ttl"),
        max_ttl=_duration(args, "--max-workload-cert-ttl"),
        trusted_node_accounts=_csv(args.trusted_node_accounts),
        node_identity_policy=_node_policy(args.node_identity_policy),
        batch_max_certificates=int(args.batch_max_certificates),
        allow_ed25519=bool(args.allow_ed25519),
        max_concurrent_rpcs=int(args.max_concurrent_rpcs),
        record=args.record or None,
        record_retention=None
        if args.record_retention in ("", "never")
        else _duration(args, "--record-retention"),
        record_max_batch=int(args.record_max_batch),
        record_linger=timedelta(milliseconds=float(args.record_linger_ms)),
        record_continue_after_damage=bool(args.record_continue_after_damage),
        admin_token_file=path(args.admin_token_file),
        ready_file=path(args.ready_file),
        material_check_interval=_duration(args, "--material-check-interval"),
        ca_rotation=args.ca_rotation,
        ca_prepare_at=float(args.ca_prepare_at),
        ca_propagation_delay=_duration(args, "--ca-propagation-delay"),
        kubeconfig=path(args.kubeconfig),
        kube=settings_from_args(args),
        **extra,
    )


def _node_policy(path: str | None) -> Any:
    """The parsed --node-identity-policy file (ConfigError naming each bad line), or None."""
    if not path:
        return None
    from ca_server.authn.node_policy import load_node_policy

    return load_node_policy(Path(path))


def _jwt_and_federation(args: argparse.Namespace) -> dict[str, Any]:
    from ca_server.spiffe.federation.peers import parse_peers
    from certs.spiffe_id import TrustDomain

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return {
        "jwt_svid_default_ttl": _duration(args, "--jwt-svid-ttl"),
        "jwt_svid_max_ttl": _duration(args, "--jwt-svid-max-ttl"),
        "jwt_key_active_life": _duration(args, "--jwt-key-active-life"),
        "bundle_endpoint_addr": args.bundle_endpoint_addr or None,
        "bundle_endpoint_profile": args.bundle_endpoint_profile,
        "bundle_endpoint_cert": path(args.bundle_endpoint_cert),
        "bundle_endpoint_key": path(args.bundle_endpoint_key),
        "federate_with": parse_peers(
            tuple(args.federate_with or ()), own=TrustDomain(args.trust_domain)
        ),
    }


def _serve(args: argparse.Namespace) -> int:
    from ca_server.errors import ConfigError
    from ca_server.logs import configure as configure_logs
    from ca_server.process.supervisor import serve
    from certs.errors import InvalidSpiffeId

    level = getattr(logging, str(args.log_level).upper())
    configure_logs(level, args.log_format)
    try:
        config = config_from_args(args)
        return serve(config, log_level=level, log_format=args.log_format)
    except (ConfigError, InvalidSpiffeId, ValueError) as exc:
        print(f"bulwark ca serve: {exc}", file=sys.stderr)
    except OSError as exc:
        print(
            f"bulwark ca serve: {os_error(exc, 'check --data-dir and its parent')}", file=sys.stderr
        )
    return 2


def os_error(exc: OSError, fix: str) -> str:
    """One line for a file-system failure: which path, what went wrong, what to check."""
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        reason = "a file is in the way where a directory is needed"
    return f"cannot use{where}: {reason} ({fix})"


def _mint(args: argparse.Namespace) -> int:
    from ca_server.authn.local_issuer import LocalIssuer

    audiences = args.audience or [DEFAULT_MINT_AUDIENCE]
    try:
        ttl = parse_duration(args.ttl, "--ttl")
        if ttl <= timedelta(0):
            raise ValueError(f"--ttl must be positive, got {args.ttl!r}")
        issuer = LocalIssuer.load_or_create(Path(args.data_dir))
    except ValueError as exc:
        print(f"bulwark token mint: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bulwark token mint: {os_error(exc, 'check --data-dir')}", file=sys.stderr)
        return 2
    print(
        issuer.mint(
            namespace=args.namespace,
            service_account=args.service_account,
            audience=audiences,
            ttl=ttl,
            pod_name=args.pod_name,
        )
    )
    return 0
