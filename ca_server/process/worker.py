"""One CA worker process: a single-threaded `grpc.aio` server sharing the port with its siblings.

The supervisor reserves the port with SO_REUSEPORT and starts one worker per
core (`ca_server.process.pool`, given `run_worker` as its target); the kernel spreads
connections across them. Each worker builds its own servicers, authenticators, signer
and record connection from the spec it is given (`ca_server.assembly`).

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
from multiprocessing.connection import Connection

import grpc

from ca_server.assembly import add_services, open_recorder
from ca_server.authn.authenticators import Authentication
from ca_server.authority.custody import (
    FILE_CUSTODY,
    PEM_SUFFIX,
    URI_SUFFIX,
    KeyCustody,
    certificate_key,
)
from ca_server.authority.material import CaMaterial
from ca_server.config import CaConfig
from ca_server.descriptors import limit as descriptor_limit
from ca_server.descriptors import open_count, raise_limit
from ca_server.errors import ConfigError, UpstreamUnavailable
from ca_server.kube.settings import own_cluster_id
from ca_server.logs import CaEventLog
from ca_server.logs import configure as configure_logs
from ca_server.metrics import CaMetrics
from ca_server.process.connections import PeerCap, connection_cap, server_options
from ca_server.process.pool import KEYS_APPLIED
from ca_server.spiffe.jwtsvid import custody as jwt_custody
from certs.errors import CertsError
from certs.pem import bundle_pem, load_certificates, to_pem

log = logging.getLogger(__name__)
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
    """What every worker of a CA shares (its keys and index are passed beside it)."""

    config: CaConfig
    host: str
    port: int
    mtls_host: str | None
    mtls_port: int | None
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

    def credentials(
        self, *, require_client_auth: bool, on_handshake: Callable[[], None]
    ) -> grpc.ServerCredentials:
        """TLS credentials whose next handshake uses whatever keys are current by then;
        `on_handshake` is told each handshake starts (grpc asks for the keys then)."""
        served = self._current[1]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            on_handshake()
            current = self._current[1]
            if current is served:
                return None
            served = current
            return current

        return grpc.dynamic_ssl_server_credentials(
            served, fetch, require_client_authentication=require_client_auth
        )


def run_worker(spec: WorkerSpec, keys: WorkerKeys, index: int, supervisor: Connection) -> None:
    """Process entry point (the pool's target): serve until SIGTERM or the supervisor's end,
    then drain and exit."""
    configure_logs(spec.log_level, spec.log_format, process=f"worker-{index}")
    asyncio.run(_serve(spec, keys, supervisor))


async def _serve(spec: WorkerSpec, initial: WorkerKeys, supervisor: Connection) -> None:
    from ca_server.process.custody import close_custody, open_custody

    raise_limit()  # inherited from the supervisor already, which logged it
    custody = open_custody(spec.config, worker=True)  # its own HSM session, if any
    try:
        await _serve_with(spec, LiveKeys(initial, custody), supervisor)
    finally:
        close_custody(custody)


async def _serve_with(spec: WorkerSpec, keys: LiveKeys, supervisor: Connection) -> None:
    metrics = CaMetrics(own_cluster=own_cluster_id(spec.config.kube))
    recorder = open_recorder(spec.config, metrics)  # its database session opens now
    events = CaEventLog()
    cap = connection_cap(descriptor_limit(), open_count() or 0)
    peers = PeerCap(per_peer=spec.config.max_connections_per_peer, cap=cap)
    server = grpc.aio.server(options=server_options(cap))
    authentication = add_services(
        server,
        spec.config,
        lambda: keys.material,
        recorder=recorder,
        metrics=metrics,
        events=events,
        resolve=jwt_custody.resolver(keys.custody),
    )
    _load_keys(authentication)
    ports = [
        server.add_secure_port(
            f"{host}:{port}",
            keys.credentials(require_client_auth=mtls, on_handshake=peers.connection_arriving),
        )
        for host, port, mtls in _listeners(spec)
    ]
    await server.start()
    peers.start(ports)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    supervisor.send(ports[0])
    stopping = threading.Event()  # tells the pipe reader an EOF is expected

    def follow() -> None:
        _follow_supervisor(supervisor, keys, stopping)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=follow, name="keys", daemon=True).start()
    await stop.wait()
    stopping.set()
    peers.stop()
    await server.stop(SHUTDOWN_GRACE_S)
    await recorder.close()
    events.flush()


def _listeners(spec: WorkerSpec) -> list[tuple[str, int, bool]]:
    """(host, port, client certificate required) of each port the worker serves."""
    listeners = [(spec.host, spec.port, False)]
    if spec.mtls_host is not None and spec.mtls_port is not None:
        listeners.append((spec.mtls_host, spec.mtls_port, True))
    return listeners


def _load_keys(authentication: Authentication) -> None:
    """The issuer's key file, read before the first request and kept; one that cannot be
    read now is retried by the requests that need it (they are answered UNAVAILABLE)."""
    try:
        authentication.load()
    except UpstreamUnavailable as exc:
        log.error("token issuer keys not loaded at start, retried on demand: %s", exc)


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
