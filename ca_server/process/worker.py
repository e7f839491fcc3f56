"""One CA worker process: a single-threaded `grpc.aio` server sharing the port with its siblings.

The supervisor reserves the port with SO_REUSEPORT and starts one worker per
core; the kernel spreads connections across them. Each worker builds its own
authenticators, signer and record connection from the spec it is given.

Requests run on the event loop: signing is CPU only, authentication moves to a
thread only when it may wait on I/O, and issuance records are committed in
batches on the record's own thread (`AsyncRecorder`). One thread doing the CPU
work costs far less than a thread pool whose threads hand the GIL to each other.

The pipe to the supervisor stays open for the worker's life: new CA material
arrives on it and is swapped in place (the signer's material, the client
certificate anchors and, through grpc's dynamic TLS credentials, the serving
certificate of the next handshake), so a material change never closes a
listening socket. The pipe's end (EOF) also tells the worker its supervisor is
gone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection

import grpc

from ca_server.authn.authenticators import Authentication
from ca_server.authn.plan import build_authentication
from ca_server.authority.custody import (
    FILE_CUSTODY,
    PEM_SUFFIX,
    URI_SUFFIX,
    KeyCustody,
    certificate_key,
    jwt_key_resolver,
)
from ca_server.authority.material import CaMaterial
from ca_server.config import CaConfig
from ca_server.errors import ConfigError
from ca_server.issuance.service import CertificateService, add_to_server
from ca_server.issuance.signer import Signer, SigningPolicy
from ca_server.logs import CaEventLog
from ca_server.logs import configure as configure_logs
from ca_server.metrics import CaMetrics
from ca_server.record.entry import Recorder
from ca_server.record.ledger.async_recorder import AsyncRecorder
from ca_server.spiffe.bundle import BundleSource
from ca_server.spiffe.federation.store import FederationStore
from ca_server.spiffe.jwtsvid.keyset import KeyFile, KeyResolver, resolve_pem
from ca_server.spiffe.jwtsvid.service import WorkloadIdentityService
from ca_server.spiffe.jwtsvid.service import add_to_server as add_identity_service
from certs.errors import CertsError
from certs.pem import bundle_pem, load_certificates, to_pem

log = logging.getLogger(__name__)
KEYS_APPLIED = "applied"
SHUTDOWN_GRACE_S = 4.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MaterialPems:
    """CA material as bytes, so it crosses the process boundary without pickling key objects.
    `signing_key` is the key's PEM, or with an HSM key its `pkcs11:` URI: the worker signs
    through its own session, and no key byte crosses the pipe."""

    signing_cert: bytes
    signing_key: bytes
    chain: bytes
    roots: bytes
    source: str

    @classmethod
    def of(cls, material: CaMaterial) -> MaterialPems:
        from ca_server.hsm.keys import HsmEcKey, HsmRsaKey
        from certs.keys import private_key_pem

        key = material.signing_key
        if isinstance(key, (HsmEcKey, HsmRsaKey)):
            key_blob = str(key.uri).encode()
        else:
            key_blob = private_key_pem(key)
        return cls(
            signing_cert=to_pem(material.signing_cert).encode(),
            signing_key=key_blob,
            chain=bundle_pem(material.chain).encode(),
            roots=bundle_pem(material.roots).encode(),
            source=material.source,
        )

    def load(self, custody: KeyCustody = FILE_CUSTODY) -> CaMaterial:
        cert = load_certificates(self.signing_cert)[0]
        suffix = URI_SUFFIX if self.signing_key.startswith(b"pkcs11:") else PEM_SUFFIX
        key = custody.decode(
            {f"key{suffix}": self.signing_key}, "key", certificate_key(cert), "the CA supervisor"
        )
        return CaMaterial(
            signing_cert=cert,
            signing_key=key,
            chain=tuple(load_certificates(self.chain)) if self.chain.strip() else (),
            roots=tuple(load_certificates(self.roots)),
            source=self.source,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerKeys:
    """What a material change replaces: the signing material and the serving TLS identity."""

    material: MaterialPems
    serving_chain_pem: bytes
    serving_key_pem: bytes

    def tls_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.serving_key_pem, self.serving_chain_pem)],
            root_certificates=self.material.roots,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    config: CaConfig
    keys: WorkerKeys
    host: str
    port: int
    mtls_host: str | None
    mtls_port: int | None
    index: int
    log_level: int
    log_format: str = "text"


class LiveKeys:
    """A worker's current keys, replaced in place; readers always see one consistent set."""

    def __init__(self, keys: WorkerKeys, custody: KeyCustody = FILE_CUSTODY) -> None:
        self.custody = custody
        self._current = (keys.material.load(custody), keys.tls_configuration())

    @property
    def material(self) -> CaMaterial:
        return self._current[0]

    def replace(self, keys: WorkerKeys) -> None:
        """Load `keys` (raising if they do not load) and make them current in one assignment."""
        self._current = (keys.material.load(self.custody), keys.tls_configuration())

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        """TLS credentials whose next handshake uses whatever keys are current by then."""
        served = self._current[1]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            current = self._current[1]
            if current is served:
                return None
            served = current
            return current

        return grpc.dynamic_ssl_server_credentials(
            served, fetch, require_client_authentication=require_client_auth
        )


def open_recorder(config: CaConfig, metrics: CaMetrics | None = None) -> AsyncRecorder:
    """The issuance record for this process (SQLite in the data dir unless --record)."""
    import ca_server.record.ledger as ledger

    url = config.record or f"sqlite:///{(config.data_dir / 'record.db').resolve()}"
    options = ledger.RecorderOptions(max_batch=config.record_max_batch)
    managed = ledger.open_recorder(url, options=options)
    return AsyncRecorder(
        managed,
        linger_s=config.record_linger.total_seconds(),
        on_commit=metrics.record_commit_duration.observe if metrics is not None else None,
    )


def run_worker(spec: WorkerSpec, supervisor: Connection) -> None:
    """Process entry point: serve until SIGTERM or the supervisor's end, then drain and exit."""
    configure_logs(spec.log_level, spec.log_format, process=f"worker-{spec.index}")
    asyncio.run(_serve(spec, supervisor))


async def _serve(spec: WorkerSpec, supervisor: Connection) -> None:
    from ca_server.process.custody import close_custody, open_custody

    custody = open_custody(spec.config, worker=True)  # its own HSM session, if any
    try:
        await _serve_with(spec, supervisor, LiveKeys(spec.keys, custody))
    finally:
        close_custody(custody)


async def _serve_with(spec: WorkerSpec, supervisor: Connection, keys: LiveKeys) -> None:
    metrics = CaMetrics()
    recorder = open_recorder(spec.config, metrics)
    events = CaEventLog()
    server = _grpc_server(spec, keys, recorder, metrics, events)
    port = server.add_secure_port(
        f"{spec.host}:{spec.port}", keys.credentials(require_client_auth=False)
    )
    if spec.mtls_host is not None:
        server.add_secure_port(
            f"{spec.mtls_host}:{spec.mtls_port}", keys.credentials(require_client_auth=True)
        )
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    supervisor.send(port)
    stopping = threading.Event()  # tells the pipe reader an EOF is expected

    def follow() -> None:
        _follow_supervisor(supervisor, keys, stopping)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=follow, name="keys", daemon=True).start()
    await stop.wait()
    stopping.set()
    await server.stop(SHUTDOWN_GRACE_S)
    await recorder.close()
    events.flush()


def signer_for(config: CaConfig, material: Callable[[], CaMaterial | None]) -> Signer:
    """The signer a worker with `config` runs, signing with whatever `material()` is current."""
    return Signer(
        material=material,
        policy=SigningPolicy(
            csr_san_policy=config.csr_san_policy,
            default_ttl=config.default_ttl,
            max_ttl=config.max_ttl,
            allow_ed25519=config.allow_ed25519,
        ),
        clock=lambda: datetime.now(UTC),
    )


def certificate_service(
    config: CaConfig,
    material: Callable[[], CaMaterial],
    *,
    recorder: Recorder | None,
    metrics: CaMetrics,
    events: CaEventLog,
    authentication: Authentication | None = None,
) -> CertificateService:
    """The servicer of a worker: the planned authenticators, the signer, the record."""
    return CertificateService(
        authentication=authentication or build_authentication(config, material),
        signer=signer_for(config, material),
        recorder=recorder,
        metrics=metrics,
        trust_domain=config.trust_domain,
        trusted_node_accounts=config.trusted_node_accounts,
        events=events,
        # The service enforces the limit itself, so an overload refusal is logged and counted.
        max_in_flight=config.max_concurrent_rpcs,
    )


def _grpc_server(
    spec: WorkerSpec,
    keys: LiveKeys,
    recorder: AsyncRecorder,
    metrics: CaMetrics,
    events: CaEventLog,
) -> grpc.aio.Server:
    authentication = build_authentication(spec.config, lambda: keys.material)
    service = certificate_service(
        spec.config,
        lambda: keys.material,
        recorder=recorder,
        metrics=metrics,
        events=events,
        authentication=authentication,
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    add_to_server(service, server)
    # bulwark.v1.WorkloadIdentityService on the same ports, with the same authentication.
    identity = identity_service(
        spec.config,
        lambda: keys.material,
        resolve=jwt_key_resolver(keys.custody),
        authentication=authentication,
        recorder=recorder,
        metrics=metrics,
        events=events,
    )
    add_identity_service(identity, server)
    return server


def identity_service(
    config: CaConfig,
    material: Callable[[], CaMaterial],
    *,
    authentication: Authentication,
    recorder: Recorder | None,
    metrics: CaMetrics,
    events: CaEventLog,
    resolve: KeyResolver = resolve_pem,
) -> WorkloadIdentityService:
    """JWT-SVIDs and trust bundles, from the shared key file and the federation store."""
    key_file = KeyFile(config.jwt_key_dir)
    own = BundleSource(
        roots=lambda: material().roots,
        key_file=key_file,
        refresh_hint=config.jwt_rotation.refresh_hint,
    )
    federated = FederationStore(config.federation_dir)

    def bundles() -> dict[str, bytes]:
        return {**federated.all(), str(config.trust_domain): own.json_bytes()}

    return WorkloadIdentityService(
        authentication=authentication,
        key_file=key_file,
        bundles=bundles,
        trust_domain=str(config.trust_domain),
        recorder=recorder,
        metrics=metrics,
        events=events,
        default_ttl=config.jwt_svid_default_ttl,
        max_ttl=config.jwt_svid_max_ttl,
        resolve=resolve,
    )


def _follow_supervisor(supervisor: Connection, keys: LiveKeys, stop: threading.Event) -> None:
    """Apply the keys the supervisor sends, answering each; stop when the supervisor is gone."""
    while True:
        try:
            update = supervisor.recv()
        except (EOFError, OSError):
            if not stop.is_set():
                log.error("the CA supervisor is gone; worker stops serving")
                stop.set()
            return
        try:
            keys.replace(update)
        except (CertsError, ValueError, ConfigError) as exc:
            log.error("new CA material not applied, still signing with the previous: %s", exc)
            supervisor.send(f"not applied: {exc}")
            continue
        supervisor.send(KEYS_APPLIED)
