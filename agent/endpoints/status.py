"""The status port: `/healthz/ready`, `/metrics` and `/debug/certs` on loopback.

A few dozen lines of asyncio instead of FastAPI + uvicorn: those two add
about 20 MB of resident memory on top of the agent's own 45 MB of imports,
for three GET routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography import x509

from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache, Snapshot
from certs.pem import serial_hex, sha256_fingerprint

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192


def describe_cert(cert: x509.Certificate, now: datetime) -> dict[str, Any]:
    """What an operator wants to see of one certificate; nothing secret."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "uri_sans": uris,
        "serial": serial_hex(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "seconds_left": int((cert.not_valid_after_utc - now).total_seconds()),
        "sha256": sha256_fingerprint(cert),
    }


def debug_certs(snapshot: Snapshot, now: datetime) -> dict[str, Any]:
    """The `/debug/certs` document: SVID, chain and roots, never the key."""
    svid, roots = snapshot.svid, snapshot.roots
    doc: dict[str, Any] = {"ready": svid is not None, "error": snapshot.svid_error or None}
    if svid is not None:
        doc["default"] = {
            "spiffe_id": str(svid.spiffe_id) if svid.spiffe_id else None,
            "serial": svid.serial,
            "not_after": svid.not_after.isoformat(),
            "seconds_left": int((svid.not_after - now).total_seconds()),
            "chain": [describe_cert(c, now) for c in svid.chain],
        }
    doc["roots"] = [describe_cert(c, now) for c in roots.certs] if roots else []
    doc["root_fingerprints"] = roots.fingerprints() if roots else []
    doc["file_resources"] = sorted(snapshot.files)
    return doc


def not_ready_reason(snapshot: Snapshot, now: datetime) -> str:
    """Empty when a valid certificate is served; else why not (an expired one counts as none)."""
    svid = snapshot.svid
    if svid is None:
        return snapshot.svid_error or "no certificate yet"
    if svid.not_after <= now:
        detail = f" ({snapshot.svid_error})" if snapshot.svid_error else ""
        return f"certificate {svid.serial} expired at {svid.not_after.isoformat()}{detail}"
    return ""


def collect_gauges(metrics: AgentMetrics, snapshot: Snapshot, now: datetime) -> None:
    """Expiry gauges just before a scrape: seconds left and the absolute expiry time."""
    metrics.clear("cert_expiry_seconds")
    metrics.clear("cert_expiry_timestamp_seconds")
    expiries = []
    if snapshot.svid is not None:
        expiries.append(("default", snapshot.svid.not_after))
    roots = snapshot.roots
    if roots is not None and roots.certs:
        expiries.append(("ROOTCA", min(c.not_valid_after_utc for c in roots.certs)))
    for name, when in expiries:
        left = round((when - now).total_seconds(), 3)
        metrics.set("cert_expiry_seconds", left, resource_name=name)
        metrics.set("cert_expiry_timestamp_seconds", when.timestamp(), resource_name=name)


class StatusServer:
    """Answers GETs; every connection carries one request (`Connection: close`)."""

    def __init__(
        self, *, cache: SecretCache, metrics: AgentMetrics, now: Callable[[], datetime]
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._now = now
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        path = path.split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"only GET is served here\n"
        if path == "/healthz/ready":
            reason = not_ready_reason(self._cache.snapshot, self._now())
            if not reason:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {reason}\n".encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self._metrics.render().encode()
        if path == "/debug/certs":
            body = json.dumps(debug_certs(self._cache.snapshot, self._now()), indent=2)
            return 200, "application/json", body.encode()
        return 404, "text/plain", b"not found: try /healthz/ready, /metrics or /debug/certs\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request head too large")
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, ctype, body = self.route(method, path)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
