"""The agent's configuration: every setting in one table, read in one place (docs/COMPATIBILITY.md §2).

`SETTINGS` has one row per setting: the `AgentConfig` field it sets, how its
text is read, what it means, the environment variable (Istio's name where
Istio has one) and the `bulwark agent run` flag that overrides it. The
defaults are `AgentConfig`'s own. `AgentConfig.from_env` (the only code of
the agent that reads the environment), the flags of `agent run` and their
`--help` text are all derived from the table. Paths are relative to the
working directory, as in Istio (`./var/run/...`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from agent.errors import ConfigError
from agent.logs import FORMATS, parse_level
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
MODES = ("pod", "node")
ATTESTORS = ("k8s", "unix")
# Node mode: every local user may reach the socket; attestation, not file modes, decides.
DEFAULT_NODE_SOCKET_MODE = 0o666
DEFAULT_NODE_SOCKET_DIR_MODE = 0o755

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
    log_level: str = "info"
    log_format: str = "text"
    # Node mode (docs/NODE-AGENT.md): one agent serves every workload of the node; the
    # identity above is then the node agent's own.
    mode: str = "pod"
    attestor: str = "k8s"
    unix_identities: Path | None = None
    node_name: str = ""
    kubeconfig: Path | None = None  # None: the in-cluster service account
    kube_service_host: str = ""
    kube_service_port: str = ""
    allow_host_pods: bool = False
    node_socket_mode: int = DEFAULT_NODE_SOCKET_MODE
    node_socket_dir_mode: int = DEFAULT_NODE_SOCKET_DIR_MODE
    max_identities: int = 512
    max_connections: int = 4096
    max_caller_connections: int = 64
    max_caller_streams: int = 128
    attest_timeout: timedelta = timedelta(seconds=5)
    key_pool: int = 4
    ca_batch_max: int = 64  # the CA's default --batch-max-certificates
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
        parse_log_level(self.log_level, "BULWARK_LOG_LEVEL")
        parse_log_format(self.log_format, "BULWARK_LOG_FORMAT")
        self._check_node()

    def _check_node(self) -> None:
        """Node mode's settings; only checked in node mode, except the choices themselves."""
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r} must be pod or node")
        if self.attestor not in ATTESTORS:
            raise ConfigError(f"BULWARK_NODE_ATTESTOR {self.attestor!r} must be k8s or unix")
        if self.mode != "node":
            return
        if self.file_mounted_certs or self.output_certs_dir is not None:
            raise ConfigError(
                "FILE_MOUNTED_CERTS and OUTPUT_CERTS hold one workload's certificate; a node "
                "agent serves many (leave them unset with --mode node)"
            )
        if self.attestor == "unix" and self.unix_identities is None:
            raise ConfigError("--attestor unix needs --unix-identities FILE")
        if self.attestor == "k8s" and not self.node_name:
            raise ConfigError("--attestor k8s needs the node's name: NODE_NAME or --node-name")
        if self.attestor == "k8s" and self.kubeconfig is None and not self.kube_service_host:
            raise ConfigError(
                "--attestor k8s needs the API server: --kubeconfig, or KUBERNETES_SERVICE_HOST "
                "(set in every pod)"
            )
        for what, mode in (
            ("BULWARK_NODE_SOCKET_MODE", self.node_socket_mode),
            ("BULWARK_NODE_SOCKET_DIR_MODE", self.node_socket_dir_mode),
        ):
            if mode & ~0o777 or mode & 0o600 != 0o600:
                raise ConfigError(
                    f"{what} {mode:04o} must be a mode of at most 0777 with owner read-write"
                )
        for what, number in (
            ("--max-identities", self.max_identities),
            ("--max-connections", self.max_connections),
            ("--max-caller-connections", self.max_caller_connections),
            ("--max-caller-streams", self.max_caller_streams),
            ("--ca-batch-max", self.ca_batch_max),
        ):
            if number < 1:
                raise ConfigError(f"{what} {number} must be at least 1")
        if not 0 <= self.key_pool <= 64:
            raise ConfigError(f"--key-pool {self.key_pool} must be between 0 and 64")
        if self.attest_timeout <= timedelta(0):
            raise ConfigError("--attest-timeout must be positive")

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
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        flags: Mapping[str, str] | None = None,
        ca_headers: Sequence[str] = (),
    ) -> AgentConfig:
        """The configuration `env` (the process environment when None) and `flags` describe.

        A variable unset or empty means the default, as in Istio. `flags` are given
        `agent run` flags (`{"--ca-addr": "..."}`) and win over the environment;
        `ca_headers` (`NAME=VALUE`, from `--ca-header`) follow the CA_HEADER_<NAME> ones.
        """
        env = os.environ if env is None else env
        kw: dict[str, object] = {}
        for setting in SETTINGS:
            text = env.get(setting.env) if setting.env else None
            if text or (text is not None and setting.empty_is_value):
                kw[setting.attr] = setting.kind.parse(text, setting.env)
        for flag, text in (flags or {}).items():
            setting = settings_by_flag()[flag]
            kw[setting.attr] = setting.kind.parse(text, flag)
        headers = sorted(
            (k[len(CA_HEADER_PREFIX) :].lower(), v)
            for k, v in env.items()
            if k.startswith(CA_HEADER_PREFIX) and len(k) > len(CA_HEADER_PREFIX)
        )
        headers += [parse_ca_header(item) for item in ca_headers]
        if headers:
            kw["ca_headers"] = tuple(headers)
        return cls(**kw)  # type: ignore[arg-type]


def default_socket(env: Mapping[str, str] | None = None) -> Path:
    """Where `agent run` listens unless --socket says otherwise (`agent status`'s default)."""
    name = (os.environ if env is None else env).get("WORKLOAD_IDENTITY_SOCKET_FILE")
    return SOCKET_DIR / (name or DEFAULT_SOCKET_FILE)


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


def parse_socket_file(text: str, what: str) -> Path:
    """WORKLOAD_IDENTITY_SOCKET_FILE: a file name in Istio's socket directory."""
    if "/" in text:
        raise ConfigError(f"{what} is a file name, not a path")
    return SOCKET_DIR / text


def parse_log_level(text: str, what: str) -> str:
    """A level `agent.logs.parse_level` knows, in lower case."""
    try:
        parse_level(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text.strip().lower()


def parse_log_format(text: str, what: str) -> str:
    if text not in FORMATS:
        raise ConfigError(f"{what} {text!r} must be text or json")
    return text


def parse_ca_header(item: str) -> tuple[str, str]:
    """`--ca-header NAME=VALUE` as the (lower-case name, value) CA_HEADER_<NAME> gives."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise ConfigError(f"--ca-header {item!r} must be NAME=VALUE")
    return name.lower(), value


def show_duration(value: timedelta) -> str:
    """A duration as Go writes it (`24h`, `1h30m`, `30s`, `500ms`), which `parse_duration` reads."""
    rest = round(value.total_seconds() * 1000)
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def show_path(value: Path) -> str:
    """A relative path as Istio writes it, from `./`."""
    return str(value) if value.is_absolute() else f"./{value}"


# Kind and Setting are named tuples, not dataclasses: a class made by @dataclass costs every
# agent process about 15 KiB, a named tuple 6 KiB.
class Kind(NamedTuple):
    """How a setting's text becomes a value (`parse(text, what)`), and how help shows one."""

    parse: Callable[[str, str], Any]
    show: Callable[[Any], str] = str


TEXT = Kind(lambda text, what: text)
PATH = Kind(lambda text, what: Path(text), show_path)
INT = Kind(parse_int)
FLOAT = Kind(parse_float)
BOOL = Kind(parse_bool, lambda value: "true" if value else "false")
DURATION = Kind(parse_duration, show_duration)
MODE = Kind(parse_mode, lambda value: f"{value:04o}")
SOCKET_FILE = Kind(parse_socket_file, lambda value: value.name)
LOG_LEVEL = Kind(parse_log_level)
LOG_FORMAT = Kind(parse_log_format)


class Setting(NamedTuple):
    """One row of the table: the field it sets, how it is read, what it means, who sets it."""

    attr: str  # the AgentConfig field
    kind: Kind
    meaning: str
    env: str = ""  # the environment variable; "" when only a flag sets it
    flag: str = ""  # the `agent run` flag that overrides it; "" when there is none
    empty_is_value: bool = False  # set but empty is a value, not "unset"

    @property
    def default(self) -> Any:
        return config_defaults()[self.attr]

    def shown_default(self) -> str:
        """The default as help and docs write it; "" when there is none (unset)."""
        value = self.default
        return "" if value is None or value == "" else self.kind.show(value)

    def help(self) -> str:
        text = f"{self.env}: {self.meaning}" if self.env else self.meaning
        shown = self.shown_default()
        return f"{text} (default: {shown})" if shown else text


# Istio's variable names where Istio has the setting (docs/COMPATIBILITY.md §2), BULWARK_* for Bulwark's own.
# CA_HEADER_<NAME> and --ca-header are a family of names, read by `AgentConfig.from_env`.
_FILES = ", ".join((istio_files.CERT_CHAIN, istio_files.KEY, istio_files.ROOT_CERT))
SETTINGS: tuple[Setting, ...] = (
    # who the workload is
    Setting("trust_domain", TEXT, "SPIFFE trust domain", env="TRUST_DOMAIN", flag="--trust-domain"),
    Setting("namespace", TEXT, "the workload's namespace", env="POD_NAMESPACE", flag="--namespace"),
    Setting("service_account", TEXT, "the workload's service account", env="SERVICE_ACCOUNT", flag="--service-account"),
    # the CA and how the agent asks it
    Setting("ca_addr", TEXT, "the CA; TLS unless the port is 15010", env="CA_ADDR", flag="--ca-addr"),
    Setting("mtls_ca_addr", TEXT, "the CA's client-certificate port, used while PROV_CERT is valid", env="BULWARK_MTLS_CA_ADDR", flag="--mtls-ca-addr"),
    Setting("ca_root_ca", PATH, "root that verifies the CA (SYSTEM for system roots)", env="CA_ROOT_CA", flag="--ca-root-ca"),
    Setting("istiod_san", TEXT, "name the CA certificate must carry (else the host of CA_ADDR)", env="ISTIOD_SAN", flag="--istiod-san"),
    Setting("prov_cert_dir", PATH, f"directory with {_FILES} for mTLS to the CA", env="PROV_CERT", flag="--prov-cert"),
    Setting("token_path", PATH, "token file, re-read before every CSR", env="BULWARK_TOKEN_PATH", flag="--token-path"),
    Setting("cluster_id", TEXT, "ClusterID header of every CSR", env="ISTIO_META_CLUSTER_ID", flag="--cluster-id"),
    Setting("cert_signer", TEXT, "CertSigner metadata of every CSR", env="ISTIO_META_CERT_SIGNER", flag="--cert-signer"),
    Setting("ca_request_timeout", DURATION, "deadline of one CSR attempt", flag="--ca-request-timeout"),
    Setting("trust_bundle_refresh", DURATION, "longest wait between two polls of the CA's trust bundles", env="BULWARK_TRUST_BUNDLE_REFRESH"),
    # the certificate: key, lifetime, renewal
    Setting("secret_ttl", DURATION, "validity the CSR asks for", env="SECRET_TTL", flag="--secret-ttl"),
    Setting("grace_ratio", FLOAT, "renew at expiry - ratio * lifetime", env="SECRET_GRACE_PERIOD_RATIO", flag="--grace-ratio"),
    Setting("grace_jitter", FLOAT, "random +/- added to that ratio", env="SECRET_GRACE_PERIOD_RATIO_JITTER", flag="--grace-jitter"),
    Setting("rsa_key_size", INT, "RSA key size: 2048, 3072 or 4096", env="WORKLOAD_RSA_KEY_SIZE", flag="--rsa-key-size"),
    Setting("ecc_signature_algorithm", TEXT, "ECDSA for EC keys", env="ECC_SIGNATURE_ALGORITHM", flag="--ecc-signature-algorithm"),
    Setting("ecc_curve", TEXT, "P256 or P384", env="ECC_CURVE", flag="--ecc-curve"),
    # certificates as files
    Setting("output_certs_dir", PATH, f"directory to write {_FILES} to", env="OUTPUT_CERTS", flag="--output-certs"),
    Setting("file_mounted_certs", BOOL, "serve the files of --file-mounted-dir instead of asking a CA", env="FILE_MOUNTED_CERTS", flag="--file-mounted-certs"),
    Setting("file_mounted_dir", PATH, "directory of FILE_MOUNTED_CERTS", flag="--file-mounted-dir"),
    Setting("file_poll_interval", DURATION, "how often watched files are checked", flag="--file-poll-interval"),
    Setting("file_resource_max_bytes", INT, "largest file-cert:/file-root: file or CA root served", env="BULWARK_FILE_RESOURCE_MAX_BYTES", flag="--file-resource-max-bytes"),
    # the socket
    Setting("socket_path", SOCKET_FILE, f"file name of the socket in {show_path(SOCKET_DIR)}", env="WORKLOAD_IDENTITY_SOCKET_FILE"),
    Setting("socket_path", PATH, "path of the unix socket (WORKLOAD_IDENTITY_SOCKET_FILE names only its file)", flag="--socket"),
    Setting("socket_mode", MODE, "socket mode: 0600, or 0660 to let --socket-group connect", env="BULWARK_SOCKET_MODE", flag="--socket-mode"),
    Setting("socket_group", TEXT, "group (name or gid) of the socket and its directory", env="BULWARK_SOCKET_GROUP", flag="--socket-group"),
    # the process
    Setting("status_addr", TEXT, "status port (health, metrics); empty disables it", env="BULWARK_AGENT_STATUS_ADDR", flag="--status-addr", empty_is_value=True),
    Setting("ready_file", PATH, "JSON with socket and status address, written once serving", env="BULWARK_AGENT_READY_FILE", flag="--ready-file"),
    Setting("log_level", LOG_LEVEL, "debug, info, warn or error", env="BULWARK_LOG_LEVEL", flag="--log-level"),
    Setting("log_format", LOG_FORMAT, "text or json, one event per line", env="BULWARK_LOG_FORMAT", flag="--log-format"),
    # node mode (docs/NODE-AGENT.md)
    Setting("mode", TEXT, "pod: one workload (POD_NAMESPACE/SERVICE_ACCOUNT); node: every workload of the node, attested, the identity above being the node agent's own", flag="--mode"),
    Setting("attestor", TEXT, "node mode: k8s (the caller's pod) or unix (--unix-identities)", env="BULWARK_NODE_ATTESTOR", flag="--attestor"),
    Setting("unix_identities", PATH, "node mode, unix attestor: YAML mapping uid/gid/path/sha256 to identities", env="BULWARK_UNIX_IDENTITIES", flag="--unix-identities"),
    Setting("node_name", TEXT, "node mode, k8s attestor: this node's name (pods are watched by spec.nodeName)", env="NODE_NAME", flag="--node-name"),
    Setting("kubeconfig", PATH, "node mode, k8s attestor: kubeconfig of the API server (unset: in-cluster)", env="KUBECONFIG", flag="--kubeconfig"),
    Setting("kube_service_host", TEXT, "node mode, in-cluster: the API server's address (set by Kubernetes)", env="KUBERNETES_SERVICE_HOST"),
    Setting("kube_service_port", TEXT, "node mode, in-cluster: the API server's port (set by Kubernetes)", env="KUBERNETES_SERVICE_PORT"),
    Setting("allow_host_pods", BOOL, "node mode, k8s attestor: serve hostNetwork and hostPID pods too", env="BULWARK_NODE_ALLOW_HOST_PODS", flag="--allow-host-pods"),
    Setting("node_socket_mode", MODE, "node mode: socket mode (every local user may connect; attestation decides)", env="BULWARK_NODE_SOCKET_MODE", flag="--node-socket-mode"),
    Setting("node_socket_dir_mode", MODE, "node mode: mode of the socket's directory", env="BULWARK_NODE_SOCKET_DIR_MODE", flag="--node-socket-dir-mode"),
    Setting("max_identities", INT, "node mode: identities served at once", env="BULWARK_NODE_MAX_IDENTITIES", flag="--max-identities"),
    Setting("max_connections", INT, "node mode: open connections, all callers", env="BULWARK_NODE_MAX_CONNECTIONS", flag="--max-connections"),
    Setting("max_caller_connections", INT, "node mode: open connections of one caller (pod or process)", env="BULWARK_NODE_MAX_CALLER_CONNECTIONS", flag="--max-caller-connections"),
    Setting("max_caller_streams", INT, "node mode: calls in progress of one caller", env="BULWARK_NODE_MAX_CALLER_STREAMS", flag="--max-caller-streams"),
    Setting("attest_timeout", DURATION, "node mode, k8s attestor: how long a new container may wait for its pod's status", env="BULWARK_NODE_ATTEST_TIMEOUT", flag="--attest-timeout"),
    Setting("key_pool", INT, "node mode: keys generated ahead of time for new identities", env="BULWARK_NODE_KEY_POOL", flag="--key-pool"),
    Setting("ca_batch_max", INT, "node mode: CSRs per BatchCreateCertificates call (at most the CA's --batch-max-certificates)", env="BULWARK_NODE_CA_BATCH_MAX", flag="--ca-batch-max"),
)  # fmt: skip


@cache  # asked once per row when --help is built, at every start
def config_defaults() -> Mapping[str, Any]:
    """Each `AgentConfig` field's default."""
    return {f.name: f.default for f in dataclasses.fields(AgentConfig) if f.init}


def settings_by_flag() -> Mapping[str, Setting]:
    return {s.flag: s for s in SETTINGS if s.flag}
