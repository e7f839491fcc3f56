"""Every setting of `bulwark ca serve`, once: flag, environment variable, default (as a user
types it), help, choices and `--help` section.

`CaConfig` (ca_server.config) takes its defaults from `default(field)`; `ca_server.cli.serve`
builds the flags from `CA_OPTIONS` and reads them back into a `CaConfig`. The Kubernetes
settings have their table in `ca_server.kube.settings`. This module imports nothing heavy:
`bulwark --help` loads it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from certs.cli.options import (
    Option,
    csv,
    duration,
    duration_or_never,
    milliseconds,
    optional_path,
    optional_text,
    path,
)
from certs.istio_files import CACERTS_LAYOUTS, ROOT_CERT
from certs.spiffe_id import TrustDomain

# The sections of `ca serve --help`, in order.
WHERE = "where it listens and keeps state"
MATERIAL = "CA material"
AUTHENTICATION = "authentication (none given: the embedded token issuer of --data-dir)"
POLICY = "issuance policy"
SPIFFE = "JWT-SVIDs, bundle endpoint, federation (docs/JWT-SVID.md)"
CAPACITY = "capacity"
RECORD = "issuance record"

CA_ROTATIONS = ("same-key", "new-key")
CSR_SAN_POLICIES = ("strict", "override")
BundleProfile = Literal["https_spiffe", "https_web"]
BUNDLE_ENDPOINT_PROFILES: tuple[BundleProfile, ...] = get_args(BundleProfile)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ISTIO_CA_AUDIENCE = "istio-ca"  # Istio's TOKEN_AUDIENCES default, and `token mint`'s audience

_CACERTS_FILES = " or ".join(", ".join(n for n in names if n) for names in CACERTS_LAYOUTS)


def _trust_domain(value: str, what: str) -> TrustDomain:
    return TrustDomain(value)


def _node_policy(value: str | None, what: str) -> Any:
    """The parsed policy file (a ConfigError naming every bad line), or None when unset."""
    if not value:
        return None
    from pathlib import Path

    from ca_server.node_policy import load_node_policy  # reads the file: not at import

    return load_node_policy(Path(value))


# CaConfig field -> its option, in `--help` order.
CA_OPTIONS: dict[str, Option] = {
    "data_dir": Option(group=WHERE, flag="--data-dir", env="BULWARK_DATA_DIR", default="./.bulwark", convert=path,
        help=f"state directory (CA key 0600, {ROOT_CERT}, record)"),
    "grpc_addr": Option(group=WHERE, flag="--grpc-addr", env="BULWARK_GRPC_ADDR", default="127.0.0.1:15012",
        help="gRPC TLS address (token authentication)"),
    # grpcio cannot ask for an optional client certificate, so renewal over mTLS gets its
    # own port where a client certificate is required.
    "mtls_grpc_addr": Option(group=WHERE, flag="--mtls-grpc-addr", env="BULWARK_MTLS_GRPC_ADDR", default="127.0.0.1:15013", convert=optional_text,
        help="gRPC address for renewal with a client certificate (required there); empty disables"),
    "admin_addr": Option(group=WHERE, flag="--admin-addr", env="BULWARK_ADMIN_ADDR", default="127.0.0.1:15014",
        help="admin HTTP address (/metrics, /healthz, /readyz, /v1)"),
    "admin_token_file": Option(group=WHERE, flag="--admin-token-file", env="BULWARK_ADMIN_TOKEN_FILE", convert=optional_path,
        help="bearer token file for the admin API (required when not on loopback)"),
    "ready_file": Option(group=WHERE, flag="--ready-file", env="BULWARK_READY_FILE", convert=optional_path,
        help="write JSON with the bound addresses here once serving"),

    "trust_domain": Option(group=MATERIAL, flag="--trust-domain", env="TRUST_DOMAIN", default="cluster.local", convert=_trust_domain,
        help="SPIFFE trust domain"),
    "cacerts_dir": Option(group=MATERIAL, flag="--cacerts-dir", env="BULWARK_CACERTS_DIR", convert=optional_path,
        help=f"plugged-in CA directory ({_CACERTS_FILES})"),
    "server_dns_names": Option(group=MATERIAL, flag="--server-dns-names", env="BULWARK_SERVER_DNS_NAMES", default="istiod.istio-system.svc", convert=csv,
        help="comma-separated DNS SANs of the CA's serving certificate"),
    "material_check_interval": Option(group=MATERIAL, flag="--material-check-interval", env="BULWARK_MATERIAL_CHECK_INTERVAL", default="10s", convert=duration,
        help="how often plugged-in CA files are re-read and self-signed root renewal is checked"),
    "ca_rotation": Option(group=MATERIAL, flag="--ca-rotation", env="BULWARK_CA_ROTATION", default="same-key", choices=CA_ROTATIONS,
        help="same-key: renew the root with its key, swap plugged-in files at once; new-key: prepared/active/retired CA slots (docs/ROTATION.md)"),
    # A 10-year root is prepared when 80% of its life is gone: Istio's 20%-left threshold.
    "ca_prepare_at": Option(group=MATERIAL, flag="--ca-prepare-at", env="BULWARK_CA_PREPARE_AT", default="0.8", type=float,
        help="new-key: prepare the next root at this fraction of the active root's life"),
    # 24h = the default workload TTL: within it every agent renewing at half-life has asked the
    # CA once (each response carries the bundle), besides re-reading the root file or the
    # ConfigMap volume within minutes. A root prepared at 80% of ten years leaves two years.
    "ca_propagation_delay": Option(group=MATERIAL, flag="--ca-propagation-delay", env="BULWARK_CA_PROPAGATION_DELAY", default="24h", convert=duration,
        help="new-key: a prepared CA is in the bundle this long before it signs"),

    "jwks_file": Option(group=AUTHENTICATION, flag="--jwks-file", env="BULWARK_JWKS_FILE", convert=optional_path,
        help="static JWKS of the token issuer (needs --jwt-issuer)"),
    "jwt_issuer": Option(group=AUTHENTICATION, flag="--jwt-issuer", env="BULWARK_JWT_ISSUER", convert=optional_text,
        help="expected token `iss`; alone, its OIDC discovery document gives the keys"),
    "audiences": Option(group=AUTHENTICATION, flag="--audiences", env="TOKEN_AUDIENCES", default=ISTIO_CA_AUDIENCE, convert=csv,
        help="comma-separated accepted token audiences"),
    "kubeconfig": Option(group=AUTHENTICATION, flag="--kubeconfig", env="KUBECONFIG", convert=optional_path,
        help="use Kubernetes (TokenReview, CA Secret, root ConfigMaps)"),
    "token_clock_skew": Option(group=AUTHENTICATION, flag="--token-clock-skew", env="BULWARK_TOKEN_CLOCK_SKEW", default="60s", convert=duration,
        help="leeway for token exp/nbf/iat against this host's clock"),
    # Kubernetes projected tokens for istio-ca live 1 h (kubelet default) to 12 h (Istio's
    # istio-token, expirationSeconds 43200); 24 h admits both with room and still refuses the
    # year-long "extended" legacy tokens and forged far-future `exp` values.
    "max_token_lifetime": Option(group=AUTHENTICATION, flag="--max-token-lifetime", env="BULWARK_MAX_TOKEN_LIFETIME", default="24h", convert=duration,
        help="refuse JWTs whose exp lies further than this after iat"),

    "csr_san_policy": Option(group=POLICY, flag="--csr-san-policy", env="BULWARK_CSR_SAN_POLICY", default="strict", choices=CSR_SAN_POLICIES,
        help="strict: reject CSRs asking for another identity; override: Istio's behaviour"),
    "max_ttl": Option(group=POLICY, flag="--max-workload-cert-ttl", env="MAX_WORKLOAD_CERT_TTL", default="2160h", convert=duration,
        help="longest certificate TTL a caller may ask for"),
    "default_ttl": Option(group=POLICY, flag="--default-workload-cert-ttl", env="DEFAULT_WORKLOAD_CERT_TTL", default="24h", convert=duration,
        help="TTL when the request asks for none"),
    "trusted_node_accounts": Option(group=POLICY, flag="--trusted-node-accounts", env="CA_TRUSTED_NODE_ACCOUNTS", default="", convert=csv,
        help="comma-separated NS/SA allowed to use ImpersonatedIdentity for service accounts with a pod on their node (Kubernetes)"),
    # Outside Kubernetes nothing binds a node agent to its workloads: the operator lists them.
    "node_identity_policy": Option(group=POLICY, flag="--node-identity-policy", env="BULWARK_NODE_IDENTITY_POLICY", convert=_node_policy,
        help='YAML file mapping node accounts NS/SA to the NS/SA patterns each may impersonate, e.g. {"bulwark-system/node-agent": ["demo/*"]}; without Kubernetes, impersonation needs it'),
    "allow_ed25519": Option(group=POLICY, flag="--allow-ed25519", env="BULWARK_ALLOW_ED25519", switch=True,
        help="accept Ed25519 workload keys"),

    "jwt_svid_default_ttl": Option(group=SPIFFE, flag="--jwt-svid-ttl", env="BULWARK_JWT_SVID_TTL", default="5m", convert=duration,
        help="JWT-SVID lifetime when MintJWTSVID asks for none"),
    "jwt_svid_max_ttl": Option(group=SPIFFE, flag="--jwt-svid-max-ttl", env="BULWARK_JWT_SVID_MAX_TTL", default="1h", convert=duration,
        help="longest JWT-SVID lifetime (longer requests are capped)"),
    "jwt_key_active_life": Option(group=SPIFFE, flag="--jwt-key-active-life", env="BULWARK_JWT_KEY_ACTIVE_LIFE", default="24h", convert=duration,
        help="how long one JWT signing key signs; the next is published at half of it"),
    "bundle_endpoint_addr": Option(group=SPIFFE, flag="--bundle-endpoint-addr", env="BULWARK_BUNDLE_ENDPOINT_ADDR", convert=optional_text,
        help="serve the SPIFFE bundle endpoint (HTTPS) here; off when unset"),
    "bundle_endpoint_profile": Option(group=SPIFFE, flag="--bundle-endpoint-profile", env="BULWARK_BUNDLE_ENDPOINT_PROFILE", default="https_spiffe", choices=BUNDLE_ENDPOINT_PROFILES,
        help="https_spiffe: present an X.509-SVID spiffe://TD/bulwark/bundle-endpoint; https_web: --bundle-endpoint-cert/--bundle-endpoint-key"),
    "bundle_endpoint_cert": Option(group=SPIFFE, flag="--bundle-endpoint-cert", env="BULWARK_BUNDLE_ENDPOINT_CERT", convert=optional_path,
        help="https_web: PEM certificate chain the bundle endpoint presents"),
    "bundle_endpoint_key": Option(group=SPIFFE, flag="--bundle-endpoint-key", env="BULWARK_BUNDLE_ENDPOINT_KEY", convert=optional_path,
        help="https_web: PEM private key of that certificate"),
    # Parsed into peers by the CLI, which knows the own trust domain they must differ from.
    "federate_with": Option(group=SPIFFE, flag="--federate-with", env="BULWARK_FEDERATE_WITH", repeat=";",
        metavar="TD=URL[,profile=P][,bundle=FILE][,endpoint-spiffe-id=ID]",
        help="federate with a foreign trust domain, repeatable; https_spiffe (the default) needs bundle=FILE"),

    "workers": Option(group=CAPACITY, flag="--workers", env="BULWARK_WORKERS", type=int,
        help="gRPC worker processes (default: one per core)"),
    "max_concurrent_rpcs": Option(group=CAPACITY, flag="--max-concurrent-rpcs", env="BULWARK_MAX_CONCURRENT_RPCS", default="2000", type=int,
        help="per worker; beyond it callers get RESOURCE_EXHAUSTED"),
    # SPIRE's BatchNewX509SVID has no limit of its own; 64 covers a busy node's identities.
    "batch_max_certificates": Option(group=CAPACITY, flag="--batch-max-certificates", env="BULWARK_BATCH_MAX_CERTIFICATES", default="64", type=int,
        help="most certificate requests one BatchCreateCertificates call may carry (1-1000)"),
    # An agent holds one or two connections; a node agent a few. The share is enforced only
    # while a worker's connections fill half of what its file descriptors allow.
    "max_connections_per_peer": Option(group=CAPACITY, flag="--max-connections-per-peer", env="BULWARK_MAX_CONNECTIONS_PER_PEER", default="32", type=int,
        help="per worker, when its connections near its file descriptor limit: a client IP holding more loses its newest; 0 disables"),

    "record": Option(group=RECORD, flag="--record", env="BULWARK_RECORD", convert=optional_text,
        help="record URL: sqlite:///PATH or postgresql://... (default: SQLite in the data dir)"),
    "record_retention": Option(group=RECORD, flag="--record-retention", env="BULWARK_RECORD_RETENTION", default="30d", convert=duration_or_never,
        help="prune rows whose certificate expired longer ago than this; 'never' keeps all"),
    "record_max_batch": Option(group=RECORD, flag="--record-max-batch", env="BULWARK_RECORD_MAX_BATCH", default="256", type=int,
        help="most certificates one commit groups; 1 turns group commit off"),
    "record_linger": Option(group=RECORD, flag="--record-linger-ms", env="BULWARK_RECORD_LINGER_MS", default="5.0", type=float, convert=milliseconds,
        help="while commits follow each other, wait this long before the next one so it carries more certificates (an idle CA commits at once)"),
    "record_continue_after_damage": Option(group=RECORD, flag="--record-continue-after-damage", env="BULWARK_RECORD_CONTINUE_AFTER_DAMAGE", switch=True,
        help="on a damaged or missing record, continue on a new segment that records the break instead of refusing to start"),
}  # fmt: skip

# `ca serve` flags that configure the process, not the CA (no CaConfig field).
LOG_OPTIONS = (
    Option(flag="--log-level", env="BULWARK_LOG_LEVEL", default="info", choices=LOG_LEVELS, type=str.lower,
        help="log verbosity"),
    Option(flag="--log-format", env="BULWARK_LOG_FORMAT", default="text", choices=LOG_FORMATS,
        help="log line format"),
)  # fmt: skip


def default(field: str) -> Any:
    """The default of CaConfig's `field`: its option's documented default, converted."""
    return CA_OPTIONS[field].default_value


__all__ = [
    "AUTHENTICATION",
    "BUNDLE_ENDPOINT_PROFILES",
    "CAPACITY",
    "CA_OPTIONS",
    "CA_ROTATIONS",
    "CSR_SAN_POLICIES",
    "ISTIO_CA_AUDIENCE",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LOG_OPTIONS",
    "MATERIAL",
    "POLICY",
    "RECORD",
    "SPIFFE",
    "WHERE",
    "BundleProfile",
    "default",
]
