"""The SPIFFE bundle endpoint: this CA's bundle over HTTPS (SPIFFE Trust Domain and Bundle spec).

A deliberately small HTTP/1.1 server on asyncio's TLS streams: `GET` on any path answers
the bundle JSON, anything else 405; one request per connection, bounded header size and
read time. The TLS identity comes from `ServingIdentity`:

- `https_spiffe`: an X.509-SVID `spiffe://<td>/bulwark/bundle-endpoint` that the
  supervisor issues from the current CA material (re-issued at half life and whenever the
  material changes), so a federated peer checks it against our bundle;
- `https_web`: the operator's certificate chain and key files (`--bundle-endpoint-cert`,
  `--bundle-endpoint-key`), re-read when they change.

Both load into one `ssl.SSLContext`, whose next handshake uses the new certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca_server.authority.material import CaMaterial
from ca_server.datadir import private_dir
from ca_server.spiffe.federation.peers import bundle_endpoint_id
from certs.files import write_atomic
from certs.pem import sha256_fingerprint
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)
ENDPOINT_SVID_TTL = timedelta(hours=24)
MAX_HEADER_BYTES = 8192
READ_TIMEOUT_S = 10.0


class ServingIdentity:
    """The certificate the endpoint presents, kept current by `refresh()`."""

    def __init__(
        self,
        *,
        profile: str,
        work_dir: Path,
        trust_domain: TrustDomain,
        material: Callable[[], CaMaterial],
        web_files: tuple[Path, Path] | None = None,
    ) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._profile = profile
        self._dir = work_dir
        self._td = trust_domain
        self._material = material
        self._web = web_files
        self._loaded: tuple[object, ...] | None = None
        self._renew_at = datetime.min.replace(tzinfo=UTC)

    def refresh(self, now: datetime) -> None:
        """Load a new certificate when the current one is due or its sources changed."""
        if self._profile == "https_web":
            assert self._web is not None
            cert_file, key_file = self._web
            stamp: tuple[object, ...] = tuple(
                (p.stat().st_mtime_ns, p.stat().st_size) for p in (cert_file, key_file)
            )
            if stamp != self._loaded:
                self.context.load_cert_chain(cert_file, key_file)
                self._loaded = stamp
            return
        material = self._material()
        stamp = (sha256_fingerprint(material.signing_cert),)
        if stamp == self._loaded and now < self._renew_at:
            return
        private_dir(self._dir, what="bundle endpoint directory")
        issued = material.issue_server_certificate(
            now=now, ttl=ENDPOINT_SVID_TTL, spiffe_id=bundle_endpoint_id(self._td)
        )
        cert_path, key_path = self._dir / "svid.pem", self._dir / "svid-key.pem"
        write_atomic(key_path, issued.key_pem, mode=0o600)
        write_atomic(cert_path, issued.chain_pem, mode=0o600)
        self.context.load_cert_chain(cert_path, key_path)
        self._loaded = stamp
        self._renew_at = now + (issued.leaf.not_valid_after_utc - now) / 2


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return None


class BundleEndpoint:
    """`GET` -> the bundle JSON of `bundle()`, over the TLS context of `identity`."""

    def __init__(self, *, bundle: Callable[[], bytes], identity: ServingIdentity) -> None:
        self._bundle = bundle
        self._identity = identity

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await _read_head(reader)
            if head is None:
                writer.write(_response("400 Bad Request", b"bad request\n", "text/plain"))
            elif not head.startswith(b"GET "):
                writer.write(_response("405 Method Not Allowed", b"GET only\n", "text/plain"))
            else:
                writer.write(_response("200 OK", self._bundle()))
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT_S)

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(
            self._handle,
            host,
            port,
            ssl=self._identity.context,
            limit=MAX_HEADER_BYTES,
            ssl_handshake_timeout=READ_TIMEOUT_S,
        )
