"""The agent's configuration: Istio's environment variable names and defaults (SPEC §2).

`AgentConfig.from_env` is the only place the agent reads the environment;
`bulwark agent run` flags override single fields with `dataclasses.replace`.
Paths are relative to the working directory, as in Istio (`./var/run/...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from agent.errors import ConfigError
from certs import istio_files, values
from certs.errors import InvalidSpiffeId
from certs.keys import KeyType
from certs.spiffe_id import SpiffeId, TrustDomain

DEFAULT_CA_ADDR = "istiod.istio-system.svc:15012"
PLAINTEXT_CA_PORT = "15010"
DEFAULT_ROOT_CERT = Path("./var/run/secrets/istio") / istio_files.ROOT_CERT
DEFAULT_TOKEN_PATH = Path("./var/run/secrets/tokens/istio-token")
SOCKET_DIR = Path("./var/run/secrets/workload-spiffe-uds")
DEFAULT_SOCKET_FILE = "socket"
FILE_MOUNTED_DIR = Path("./etc/certs")
DEFAULT_SECRET_TTL = timedelta(hours=24)
DEFAULT_TRUST_BUNDLE_REFRESH = timedelta(seconds=30)
DEFAULT_STATUS_ADDR = "127.0.0.1:15020"
DEFAULT_SOCKET_MODE = 0o600
DEFAULT_FILE_RESOURCE_MAX_BYTES = 1 << 20
CA_HEADER_PREFIX = "CA_HEADER_"

_RSA_SIZES = {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}
_CURVES = {"P256": KeyType.EC_P256, "P384": KeyType.EC_P384}


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything the agent needs to run; validated when constructed."""

    trust_domain: str = "cluster.local"
    namespace: str = "default"
    service_account: str = "default"
    ca_addr: str = DEFAULT_CA_ADDR
    # Bulwark's CA takes client-certificate renewal on its own port (grpcio cannot ask for an
    # optional client certificate); with PROV_CERT valid the agent dials this address instead.
    mtls_ca_addr: str = ""
    ca_root_ca: Path | None = None  # CA_ROOT_CA; None means the Istio fallbacks
    istiod_san: str = ""
    prov_cert_dir: Path | None = None
    output_certs_dir: Path | None = None
    file_mounted_certs: bool = False
    file_mounted_dir: Path = FILE_MOUNTED_DIR
    secret_ttl: timedelta = DEFAULT_SECRET_TTL
    grace_ratio: float = 0.5
    grace_jitter: float = 0.01
    rsa_key_size: int = 2048
    ecc_signature_algorithm: str = ""
    ecc_curve: str = "P256"
    cluster_id: str = "Kubernetes"
    cert_signer: str = ""
    ca_headers: tuple[tuple[str, str], ...] = ()
    socket_path: Path = SOCKET_DIR / DEFAULT_SOCKET_FILE
    token_path: Path = DEFAULT_TOKEN_PATH
    status_addr: str = DEFAULT_STATUS_ADDR  # "" disables the status server
    ready_file: Path | None = None
    # Who may connect: the socket is created owner-only; a group (name or gid) and mode open it
    # to an Envoy running as another user of that group.
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str = ""
    file_resource_max_bytes: int = DEFAULT_FILE_RESOURCE_MAX_BYTES
    file_poll_interval: timedelta = timedelta(seconds=1)
    ca_request_timeout: timedelta = timedelta(seconds=10)
    # Longest wait between two FetchTrustBundles polls (the bundle's refresh hint may be shorter).
    trust_bundle_refresh: timedelta = DEFAULT_TRUST_BUNDLE_REFRESH
    spiffe_id: SpiffeId = field(init=False)

    def __post_init__(self) -> None:
        for name, value in (
            ("POD_NAMESPACE", self.namespace),
            ("SERVICE_ACCOUNT", self.service_account),
        ):
            if not value or "/" in value:
                raise ConfigError(f"{name} {value!r} must be one non-empty name without '/'")
        try:
            sid = SpiffeId.for_service_account(
                TrustDomain(self.trust_domain), self.namespace, self.service_account
            )
        except InvalidSpiffeId as exc:
            raise ConfigError(f"TRUST_DOMAIN/POD_NAMESPACE/SERVICE_ACCOUNT: {exc}") from exc
        object.__setattr__(self, "spiffe_id", sid)
        self._check_numbers()
        self.key_type()  # validates the key settings
        if not self.file_mounted_certs:
            split_host_port(self.ca_addr, what="CA_ADDR")
        if self.status_addr:
            split_host_port(self.status_addr, what="BULWARK_AGENT_STATUS_ADDR")

    def _check_numbers(self) -> None:
        if self.secret_ttl <= timedelta(0):
            raise ConfigError("SECRET_TTL must be positive (the CA reads 0 as its 24h default)")
        if not 0.0 < self.grace_ratio < 1.0:
            raise ConfigError(f"SECRET_GRACE_PERIOD_RATIO {self.grace_ratio} must be in (0, 1)")
        if not 0.0 <= self.grace_jitter < min(self.grace_ratio, 1.0 - self.grace_ratio):
            raise ConfigError(
                f"SECRET_GRACE_PERIOD_RATIO_JITTER {self.grace_jitter} must be >= 0 and keep "
                "the ratio inside (0, 1)"
            )
        if self.file_poll_interval <= timedelta(0):
            raise ConfigError("the file poll interval must be positive")
        if self.ca_request_timeout <= timedelta(0):
            raise ConfigError("the CA request timeout must be positive")
        if not timedelta(0) < self.trust_bundle_refresh <= timedelta(days=1):
            raise ConfigError("BULWARK_TRUST_BUNDLE_REFRESH must be positive and at most 1 day")
        if self.socket_mode & ~0o660 or not self.socket_mode & 0o600 == 0o600:
            raise ConfigError(
                f"BULWARK_SOCKET_MODE {self.socket_mode:04o} must be 0600 or 0660 "
                "(owner read-write, optionally the group; never other users)"
            )
        if not 1024 <= self.file_resource_max_bytes <= 64 << 20:
            raise ConfigError(
                f"BULWARK_FILE_RESOURCE_MAX_BYTES {self.file_resource_max_bytes} must be "
                "between 1024 and 67108864"
            )

    def key_type(self) -> KeyType:
        """The workload key algorithm: RSA unless ECC_SIGNATURE_ALGORITHM=ECDSA."""
        if self.ecc_signature_algorithm.upper() == "ECDSA":
            try:
                return _CURVES[self.ecc_curve.upper()]
            except KeyError:
                raise ConfigError(f"ECC_CURVE {self.ecc_curve!r} must be P256 or P384") from None
        if self.ecc_signature_algorithm not in ("", "RSA"):
            raise ConfigError(
                f"ECC_SIGNATURE_ALGORITHM {self.ecc_signature_algorithm!r} must be ECDSA or empty"
            )
        try:
            return _RSA_SIZES[self.rsa_key_size]
        except KeyError:
            raise ConfigError(
                f"WORKLOAD_RSA_KEY_SIZE {self.rsa_key_size} must be 2048, 3072 or 4096"
            ) from None

    @property
    def ca_uses_tls(self) -> bool:
        """Istio talks plaintext only to port 15010."""
        return self.ca_addr.rsplit(":", 1)[-1] != PLAINTEXT_CA_PORT

    @property
    def ca_server_name(self) -> str:
        """The name the CA's certificate must carry: ISTIOD_SAN, else the host of CA_ADDR."""
        return self.istiod_san or split_host_port(self.ca_addr, what="CA_ADDR")[0]

    def ca_root_candidates(self) -> tuple[Path, ...]:
        """Where the root that verifies the CA comes from, in Istio's order of preference."""
        if self.ca_root_ca is not None:
            return (self.ca_root_ca,)
        paths = [DEFAULT_ROOT_CERT]
        if self.prov_cert_dir is not None:
            paths.append(self.prov_cert_dir / istio_files.ROOT_CERT)
        return tuple(paths)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentConfig:
        """Read Istio's variables (unset or empty means the default)."""
        kw: dict[str, object] = {}

        def text(name: str, attr: str) -> None:
            if env.get(name):
                kw[attr] = env[name]

        def path(name: str, attr: str) -> None:
            if env.get(name):
                kw[attr] = Path(env[name])

        text("TRUST_DOMAIN", "trust_domain")
        text("POD_NAMESPACE", "namespace")
        text("SERVICE_ACCOUNT", "service_account")
        text("CA_ADDR", "ca_addr")
        text("BULWARK_MTLS_CA_ADDR", "mtls_ca_addr")
        path("CA_ROOT_CA", "ca_root_ca")
        text("ISTIOD_SAN", "istiod_san")
        path("PROV_CERT", "prov_cert_dir")
        path("OUTPUT_CERTS", "output_certs_dir")
        text("ECC_SIGNATURE_ALGORITHM", "ecc_signature_algorithm")
        text("ECC_CURVE", "ecc_curve")
        text("ISTIO_META_CLUSTER_ID", "cluster_id")
        text("ISTIO_META_CERT_SIGNER", "cert_signer")
        path("BULWARK_TOKEN_PATH", "token_path")
        if "BULWARK_AGENT_STATUS_ADDR" in env:  # set but empty: no status server
            kw["status_addr"] = env["BULWARK_AGENT_STATUS_ADDR"]
        path("BULWARK_AGENT_READY_FILE", "ready_file")
        text("BULWARK_SOCKET_GROUP", "socket_group")
        if env.get("BULWARK_SOCKET_MODE"):
            kw["socket_mode"] = parse_mode(env["BULWARK_SOCKET_MODE"], "BULWARK_SOCKET_MODE")
        if env.get("BULWARK_FILE_RESOURCE_MAX_BYTES"):
            kw["file_resource_max_bytes"] = parse_int(
                env["BULWARK_FILE_RESOURCE_MAX_BYTES"], "BULWARK_FILE_RESOURCE_MAX_BYTES"
            )
        if env.get("FILE_MOUNTED_CERTS"):
            kw["file_mounted_certs"] = parse_bool(env["FILE_MOUNTED_CERTS"], "FILE_MOUNTED_CERTS")
        if env.get("SECRET_TTL"):
            kw["secret_ttl"] = parse_duration(env["SECRET_TTL"], "SECRET_TTL")
        if env.get("BULWARK_TRUST_BUNDLE_REFRESH"):
            kw["trust_bundle_refresh"] = parse_duration(
                env["BULWARK_TRUST_BUNDLE_REFRESH"], "BULWARK_TRUST_BUNDLE_REFRESH"
            )
        for name, attr in (
            ("SECRET_GRACE_PERIOD_RATIO", "grace_ratio"),
            ("SECRET_GRACE_PERIOD_RATIO_JITTER", "grace_jitter"),
        ):
            if env.get(name):
                kw[attr] = parse_float(env[name], name)
        if env.get("WORKLOAD_RSA_KEY_SIZE"):
            kw["rsa_key_size"] = parse_int(env["WORKLOAD_RSA_KEY_SIZE"], "WORKLOAD_RSA_KEY_SIZE")
        if env.get("WORKLOAD_IDENTITY_SOCKET_FILE"):
            name = env["WORKLOAD_IDENTITY_SOCKET_FILE"]
            if "/" in name:
                raise ConfigError("WORKLOAD_IDENTITY_SOCKET_FILE is a file name, not a path")
            kw["socket_path"] = SOCKET_DIR / name
        headers = sorted(
            (k[len(CA_HEADER_PREFIX) :].lower(), v)
            for k, v in env.items()
            if k.startswith(CA_HEADER_PREFIX) and len(k) > len(CA_HEADER_PREFIX)
        )
        if headers:
            kw["ca_headers"] = tuple(headers)
        return cls(**kw)  # type: ignore[arg-type]


def split_host_port(addr: str, *, what: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) into its parts, or `ConfigError` naming `what`."""
    try:
        return values.parse_host_port(addr, what)
    except values.InvalidValue as exc:
        raise ConfigError(str(exc)) from None


def parse_duration(text: str, what: str) -> timedelta:
    """A Go duration (`24h`, `1h30m`, `500ms`, `7d`) or plain seconds (`90`)."""
    try:
        return values.parse_duration(text, what)
    except values.InvalidValue as exc:
        raise ConfigError(str(exc)) from None


def parse_float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number") from None


def parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not an integer") from None


def parse_mode(text: str, what: str) -> int:
    """A file mode in octal (`0660`, `660`)."""
    try:
        return int(text.strip(), 8)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not an octal file mode such as 0600") from None


def parse_bool(text: str, what: str) -> bool:
    """Go's `strconv.ParseBool` words; anything else is a `ConfigError`, never false."""
    try:
        return values.parse_bool(text, what)
    except values.InvalidValue as exc:
        raise ConfigError(str(exc)) from None
