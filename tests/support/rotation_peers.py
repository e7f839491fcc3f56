"""Two mTLS peers fed by Bulwark agents' OUTPUT_CERTS, for rotation tests.

A server and a client, each re-reading its agent's `cert-chain.pem`, `key.pem` and
`root-cert.pem` whenever they change (a consistent set only: the agent writes the three
files one after the other, so a key that does not match the leaf means "read again").
Every exchange is recorded: which certificate each side presented and the roots the other
side held at that moment, so a test can check each served certificate against the bundle
its peer trusted then, on top of the handshake's own verification.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.keys import load_private_key, spki_der
from certs.pem import load_certificates


@dataclass(frozen=True)
class Credentials:
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return load_certificates(self.chain_pem)[0]

    @property
    def roots(self) -> list[x509.Certificate]:
        return load_certificates(self.roots_pem)


def read_credentials(directory: Path, timeout: float = 5.0) -> Credentials:
    """A consistent (chain, key, roots) set from an agent's OUTPUT_CERTS directory."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            chain = (directory / "cert-chain.pem").read_bytes()
            key = (directory / "key.pem").read_bytes()
            roots = (directory / "root-cert.pem").read_bytes()
            leaf = load_certificates(chain)[0]
            if spki_der(load_private_key(key).public_key()) == spki_der(leaf.public_key()):  # type: ignore[arg-type]
                return Credentials(chain, key, roots)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no consistent credentials in {directory}")
        time.sleep(0.005)


class ContextCache:
    """An SSLContext per credentials set, rebuilt when the agent's files change."""

    def __init__(self, directory: Path, purpose: int) -> None:
        self._directory = directory
        self._purpose = purpose
        self._tmp = Path(tempfile.mkdtemp(prefix="rot-peer-"))
        self._current: tuple[Credentials, ssl.SSLContext] | None = None

    def get(self) -> tuple[Credentials, ssl.SSLContext]:
        creds = read_credentials(self._directory)
        if self._current is not None and self._current[0] == creds:
            return self._current
        ctx = ssl.SSLContext(self._purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self._purpose == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False  # SPIFFE IDs are URI SANs, not host names
        ctx.verify_mode = ssl.CERT_REQUIRED
        (self._tmp / "chain.pem").write_bytes(creds.chain_pem)
        (self._tmp / "key.pem").write_bytes(creds.key_pem)
        ctx.load_cert_chain(self._tmp / "chain.pem", self._tmp / "key.pem")
        ctx.load_verify_locations(cadata=creds.roots_pem.decode())
        self._current = (creds, ctx)
        return self._current


@dataclass(frozen=True)
class Exchange:
    """One request: what each side presented and the roots its peer trusted at that time."""

    at: float  # time.monotonic()
    wall: datetime
    client_leaf: bytes  # DER
    server_leaf: bytes
    client_roots: bytes  # PEM the client verified the server with
    server_roots: bytes


@dataclass
class Record:
    exchanges: list[Exchange] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Server:
    """Answers `ping` with `pong` over mTLS, credentials from `directory` per connection."""

    def __init__(self, directory: Path, record: Record) -> None:
        self._contexts = ContextCache(directory, ssl.PROTOCOL_TLS_SERVER)
        self._record = record
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.served: dict[bytes, bytes] = {}  # client leaf DER -> server roots PEM at accept
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            try:
                creds, ctx = self._contexts.get()
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    peer = tls.getpeercert(binary_form=True) or b""
                    with self._record.lock:
                        self.served[peer] = creds.roots_pem
                    if tls.recv(16) == b"ping\n":
                        tls.sendall(b"pong\n")
            except (OSError, ssl.SSLError, RuntimeError) as exc:
                with self._record.lock:
                    self._record.failures.append(f"server: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


class Client:
    """Sends `ping` every `period` seconds over a fresh mTLS connection."""

    def __init__(self, directory: Path, server: Server, record: Record, period: float) -> None:
        self._contexts = ContextCache(directory, ssl.PROTOCOL_TLS_CLIENT)
        self._server = server
        self._record = record
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _once(self) -> None:
        creds, ctx = self._contexts.get()
        raw = socket.create_connection(("127.0.0.1", self._server.port), timeout=5)
        with raw, ctx.wrap_socket(raw) as tls:
            server_leaf = tls.getpeercert(binary_form=True) or b""
            tls.sendall(b"ping\n")
            if tls.recv(16) != b"pong\n":
                raise RuntimeError("no pong")
        client_leaf = creds.leaf.public_bytes(Encoding.DER)
        with self._record.lock:
            server_roots = self._server.served.pop(client_leaf, b"")
            self._record.exchanges.append(
                Exchange(
                    time.monotonic(),
                    datetime.now(UTC),
                    client_leaf,
                    server_leaf,
                    creds.roots_pem,
                    server_roots,
                )
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._once()
            except (OSError, ssl.SSLError, RuntimeError) as exc:
                with self._record.lock:
                    self._record.failures.append(f"client: {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self._period - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
