"""CA server configuration: one frozen dataclass, built from flags and environment in
`ca_server.cli.serve`. Each field's default is its flag's documented default, taken from the
one table of `ca serve` settings (`ca_server.options`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ca_server.errors import ConfigError
from ca_server.options import BUNDLE_ENDPOINT_PROFILES, CA_ROTATIONS, CSR_SAN_POLICIES, default
from certs import istio_files
from certs.spiffe_id import TrustDomain
from certs.values import InvalidValue, parse_host_port

if TYPE_CHECKING:
    from ca_server.hsm.settings import Pkcs11Settings
    from ca_server.kube.settings import KubeSettings
    from ca_server.node_policy import NodeIdentityPolicy
    from ca_server.spiffe.federation.peers import FederationPeer

DEFAULT_JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
MAX_BATCH_MAX_CERTIFICATES = 1000


def parse_hostport(text: str, *, what: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) to a pair, with an error that names the flag."""
    try:
        return parse_host_port(text, what)
    except InvalidValue as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class CaConfig:
    """Everything `bulwark ca serve` needs; validated on construction."""

    data_dir: Path
    trust_domain: TrustDomain = default("trust_domain")
    grpc_addr: str = default("grpc_addr")
    mtls_grpc_addr: str | None = default("mtls_grpc_addr")  # None disables it
    admin_addr: str = default("admin_addr")
    cacerts_dir: Path | None = default("cacerts_dir")
    jwks_file: Path | None = default("jwks_file")
    jwt_issuer: str | None = default("jwt_issuer")
    audiences: tuple[str, ...] = default("audiences")
    jwt_algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS
    token_clock_skew: timedelta = default("token_clock_skew")  # leeway for exp/nbf/iat
    max_token_lifetime: timedelta = default("max_token_lifetime")  # longest exp - iat of a JWT
    csr_san_policy: str = default("csr_san_policy")
    server_dns_names: tuple[str, ...] = default("server_dns_names")
    default_ttl: timedelta = default("default_ttl")
    max_ttl: timedelta = default("max_ttl")
    trusted_node_accounts: tuple[str, ...] = default("trusted_node_accounts")  # "ns/sa" entries
    # Outside Kubernetes: which identities each node account may impersonate (parsed file).
    node_identity_policy: NodeIdentityPolicy | None = default("node_identity_policy")
    batch_max_certificates: int = default("batch_max_certificates")  # items per batch call
    allow_ed25519: bool = default("allow_ed25519")
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # --workers unset: per core
    max_concurrent_rpcs: int = default("max_concurrent_rpcs")
    max_connections_per_peer: int = default("max_connections_per_peer")  # 0: no per-peer share
    record: str | None = default("record")  # record URL; None means SQLite in the data dir
    record_retention: timedelta | None = default("record_retention")  # None keeps all
    record_max_batch: int = default("record_max_batch")  # 1 turns group commit off
    record_linger: timedelta = default("record_linger")  # a busy worker's wait to grow a batch
    record_continue_after_damage: bool = default("record_continue_after_damage")
    admin_token_file: Path | None = default("admin_token_file")
    ready_file: Path | None = default("ready_file")
    kubeconfig: Path | None = default("kubeconfig")
    # How often CA material is re-read (plugged-in files, the stored root) and renewal checked.
    material_check_interval: timedelta = default("material_check_interval")
    kube: KubeSettings | None = None  # set by --kubeconfig or --kube-in-cluster
    # CA rotation (ca_server.authority.slots.model): same-key renewal (Istio's), or
    # prepared/active/retired slots moving to a new key.
    ca_rotation: str = default("ca_rotation")
    ca_prepare_at: float = default("ca_prepare_at")  # fraction of the active CA's life
    ca_propagation_delay: timedelta = default("ca_propagation_delay")
    # JWT-SVIDs (docs/JWT-SVID.md): token lifetimes and how long one signing key signs.
    jwt_svid_default_ttl: timedelta = default("jwt_svid_default_ttl")
    jwt_svid_max_ttl: timedelta = default("jwt_svid_max_ttl")
    jwt_key_active_life: timedelta = default("jwt_key_active_life")
    # The SPIFFE bundle endpoint (off unless an address is given).
    bundle_endpoint_addr: str | None = default("bundle_endpoint_addr")
    bundle_endpoint_profile: str = default("bundle_endpoint_profile")
    bundle_endpoint_cert: Path | None = default("bundle_endpoint_cert")  # https_web: chain, key
    bundle_endpoint_key: Path | None = default("bundle_endpoint_key")
    federate_with: tuple[FederationPeer, ...] = ()
    # PKCS#11 key custody (docs/HSM.md): the CA key in an HSM; None keeps file keys.
    pkcs11: Pkcs11Settings | None = None

    def __post_init__(self) -> None:
        parse_hostport(self.grpc_addr, what="--grpc-addr")
        parse_hostport(self.admin_addr, what="--admin-addr")
        if self.mtls_grpc_addr is not None:
            parse_hostport(self.mtls_grpc_addr, what="--mtls-grpc-addr")
        if self.csr_san_policy not in CSR_SAN_POLICIES:
            raise ConfigError(
                f"--csr-san-policy must be one of {', '.join(CSR_SAN_POLICIES)}, "
                f"got {self.csr_san_policy!r}"
            )
        if not self.audiences:
            raise ConfigError("--audiences must name at least one audience")
        if self.jwks_file is not None and not self.jwt_issuer:
            raise ConfigError("--jwks-file needs --jwt-issuer: the `iss` its tokens must carry")
        if not timedelta(0) <= self.record_linger <= timedelta(seconds=1):
            raise ConfigError("--record-linger-ms must be between 0 and 1000")
        if self.record_max_batch < 1:
            raise ConfigError("--record-max-batch must be at least 1 (1 turns group commit off)")
        if self.material_check_interval <= timedelta(0):
            raise ConfigError("--material-check-interval must be positive")
        if not timedelta(0) <= self.token_clock_skew <= timedelta(minutes=10):
            raise ConfigError("--token-clock-skew must be between 0s and 10m")
        if self.max_token_lifetime <= timedelta(0):
            raise ConfigError("--max-token-lifetime must be positive")
        if self.ca_rotation not in CA_ROTATIONS:
            raise ConfigError(
                f"--ca-rotation must be {' or '.join(CA_ROTATIONS)}, got {self.ca_rotation!r}"
            )
        if not 0.0 < self.ca_prepare_at <= 1.0:
            raise ConfigError("--ca-prepare-at must be a fraction of the CA's life in (0, 1]")
        if self.ca_propagation_delay < timedelta(0):
            raise ConfigError("--ca-propagation-delay cannot be negative")
        if not 1 <= self.batch_max_certificates <= MAX_BATCH_MAX_CERTIFICATES:
            raise ConfigError(
                f"--batch-max-certificates must be between 1 and {MAX_BATCH_MAX_CERTIFICATES}"
            )
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.max_connections_per_peer < 0:
            raise ConfigError("--max-connections-per-peer must be 0 (off) or more")
        if self.default_ttl <= timedelta(0) or self.default_ttl > self.max_ttl:
            raise ConfigError("the default workload TTL must be positive and at most the maximum")
        self._check_jwt_and_bundle()
        for account in self.trusted_node_accounts:
            if account.count("/") != 1:
                raise ConfigError(
                    f"trusted node account {account!r} must be NAMESPACE/SERVICEACCOUNT"
                )

    def _check_jwt_and_bundle(self) -> None:
        if not timedelta(0) < self.jwt_svid_default_ttl <= self.jwt_svid_max_ttl:
            raise ConfigError("--jwt-svid-ttl must be positive and at most --jwt-svid-max-ttl")
        if self.jwt_key_active_life < timedelta(seconds=1):
            raise ConfigError("--jwt-key-active-life must be at least 1s")
        if self.bundle_endpoint_addr is not None:
            parse_hostport(self.bundle_endpoint_addr, what="--bundle-endpoint-addr")
        if self.bundle_endpoint_profile not in BUNDLE_ENDPOINT_PROFILES:
            raise ConfigError(
                f"--bundle-endpoint-profile must be one of {', '.join(BUNDLE_ENDPOINT_PROFILES)}"
            )
        web_files = (self.bundle_endpoint_cert, self.bundle_endpoint_key)
        if self.bundle_endpoint_profile == "https_web" and None in web_files:
            raise ConfigError(
                "--bundle-endpoint-profile https_web needs --bundle-endpoint-cert and "
                "--bundle-endpoint-key (the WebPKI certificate chain and key it presents)"
            )

    @property
    def jwt_key_dir(self) -> Path:
        """The JWT-SVID signing keys (0700; keys.json 0600), written by the supervisor only."""
        return self.data_dir / "jwt-svid"

    @property
    def federation_dir(self) -> Path:
        """Kept bundles of federated trust domains, one JSON file each."""
        return self.data_dir / "federation"

    @property
    def root_cert_path(self) -> Path:
        """The current root bundle: the file agents and clients are given."""
        return self.data_dir / istio_files.ROOT_CERT

    @property
    def uses_local_issuer(self) -> bool:
        """No authenticator configured: trust the embedded token issuer of the data dir."""
        return (
            self.jwks_file is None
            and self.jwt_issuer is None
            and self.kubeconfig is None
            and self.kube is None
        )
