"""A scripted SPIFFE bundle endpoint for federation tests: real TLS on 127.0.0.1:0.

`ScriptedEndpoint` answers each GET with the next step of its script (the last step
repeats): `Serve(body)` sends a whole HTTP/1.1 200 answer, `Trickle(body)` sends the same
answer ONE BYTE PER SECOND (a slow-loris endpoint: every read gets a byte long before any
per-read timeout). Its certificate is for `localhost`, issued by a throwaway WebPKI-style
CA whose PEM file is `ca_file` (set `SSL_CERT_FILE` to it for the `https_web` profile).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from certs.files import write_atomic
from certs.keys import KeyType, PrivateKey, generate_key, private_key_pem
from certs.pem import to_pem
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_bundle import x509_authority
from certs.spiffe_id import TrustDomain


@dataclass(frozen=True)
class Serve:
    body: bytes


@dataclass(frozen=True)
class Trickle:
    body: bytes
    byte_every_s: float = 1.0


Step = Serve | Trickle


def http_answer(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


@dataclass
class ScriptedEndpoint:
    """`start()` binds and serves in a thread; `url` and `ca_file` are then set."""

    work: Path
    script: list[Step]
    served: list[str] = field(default_factory=list)  # "serve" / "trickle", one per request
    url: str = ""
    ca_file: Path = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None

    def start(self) -> ScriptedEndpoint:
        context = self._tls_context()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"https://localhost:{self._listener.getsockname()[1]}/"
        threading.Thread(target=self._accept, args=(context,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()

    def _tls_context(self) -> ssl.SSLContext:
        now = datetime.now(UTC)
        ca_key = generate_key()
        root = self_signed_root(key=ca_key, trust_domain=TrustDomain("web-ca.test"), now=now)
        key = generate_key()
        leaf = leaf_certificate(
            spiffe_id=None, public_key=key.public_key(), issuer_cert=root, issuer_key=ca_key,
            now=now, ttl=timedelta(hours=1), dns_names=("localhost",),
        )  # fmt: skip
        self.ca_file = self.work / "endpoint-ca.pem"
        write_atomic(self.ca_file, to_pem(root).encode())
        cert_file, key_file = self.work / "endpoint.pem", self.work / "endpoint-key.pem"
        write_atomic(cert_file, to_pem(leaf).encode())
        write_atomic(key_file, private_key_pem(key), mode=0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context

    def _accept(self, context: ssl.SSLContext) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(context, conn), daemon=True).start()

    def _answer(self, context: ssl.SSLContext, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            with context.wrap_socket(conn, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                step = self.script[min(len(self.served), len(self.script) - 1)]
                answer = http_answer(step.body)
                if isinstance(step, Serve):
                    self.served.append("serve")
                    tls.sendall(answer)
                    return
                self.served.append("trickle")
                for i in range(len(answer)):
                    if self._stop.wait(step.byte_every_s):
                        return
                    tls.sendall(answer[i : i + 1])
        except (OSError, ssl.SSLError):
            return  # the client gave up (the point of a trickle), or the test ended


# --- bundle documents --------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_jwk(kid: str, key: PrivateKey | None = None) -> dict[str, Any]:
    """A public P-256 `jwt-svid` key."""
    key = key or generate_key(KeyType.EC_P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey), "a jwt-svid JWK here is P-256"
    numbers = key.public_key().public_numbers()
    return {
        "use": "jwt-svid", "kid": kid, "kty": "EC", "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big")),
    }  # fmt: skip


def root_jwk(trust_domain: str = "peer.test", key: PrivateKey | None = None) -> dict[str, Any]:
    """A fresh self-signed root of `trust_domain` (of `key`) as an `x509-svid` authority."""
    key = key or generate_key()
    root = self_signed_root(key=key, trust_domain=TrustDomain(trust_domain), now=datetime.now(UTC))
    return x509_authority(root)


def leaf_jwk(trust_domain: str = "peer.test") -> dict[str, Any]:
    """A leaf (CA:false) of `trust_domain` dressed as an `x509-svid` authority."""
    now = datetime.now(UTC)
    ca_key, key = generate_key(), generate_key()
    root = self_signed_root(key=ca_key, trust_domain=TrustDomain(trust_domain), now=now)
    leaf = leaf_certificate(
        spiffe_id=None, public_key=key.public_key(), issuer_cert=root, issuer_key=ca_key,
        now=now, ttl=timedelta(hours=1), dns_names=("leaf.peer.test",),
    )  # fmt: skip
    return x509_authority(leaf)


def bundle(keys: Sequence[dict[str, Any]], *, sequence: int | None, hint: int = 1) -> bytes:
    doc: dict[str, Any] = {"keys": list(keys), "spiffe_refresh_hint": hint}
    if sequence is not None:
        doc["spiffe_sequence"] = sequence
    return json.dumps(doc).encode()
