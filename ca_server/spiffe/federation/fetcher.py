"""Fetching foreign bundles from their SPIFFE bundle endpoints, and keeping them fresh.

https_spiffe: the endpoint must present an X.509-SVID that chains to the roots of the
last bundle we hold for that trust domain and names the configured endpoint SPIFFE ID.
https_web: ordinary WebPKI server authentication (the system trust store, or the file
`SSL_CERT_FILE` names).

`Federator.run` keeps one loop per peer: fetch, store when valid, sleep the bundle's
`spiffe_refresh_hint` (bounded); on failure keep the known bundle, log, count, back off.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ca_server.errors import ConfigError
from ca_server.logs import escape
from ca_server.spiffe.federation.peers import FederationPeer
from ca_server.spiffe.federation.store import (
    BadBundle,
    FederationStore,
    parse_bundle,
    refresh_hint_of,
    roots_pem,
)

log = logging.getLogger(__name__)
FETCH_TIMEOUT_S = 10.0
MIN_REFRESH_S = 1.0
MAX_REFRESH_S = 3600.0
DEFAULT_REFRESH_S = 300.0
MAX_BACKOFF_S = 300.0


class FetchFailed(Exception):
    """A bundle endpoint could not be reached, authenticated or understood."""


def _svid_id(der: bytes) -> str | None:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None


def _context(peer: FederationPeer, known: dict[str, Any] | None) -> ssl.SSLContext:
    if peer.profile == "https_web":
        return ssl.create_default_context()
    if known is None:
        raise FetchFailed("no known bundle to authenticate the https_spiffe endpoint with")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the SVID names a SPIFFE ID, checked below, not a host
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots_pem(known))
    return ctx


def fetch_bundle(peer: FederationPeer, known: dict[str, Any] | None) -> dict[str, Any]:
    """GET the peer's bundle (blocking); `FetchFailed` saying why it could not be used."""
    url = urllib.parse.urlsplit(peer.url)
    try:
        conn = http.client.HTTPSConnection(
            url.hostname or "",
            url.port or 443,
            timeout=FETCH_TIMEOUT_S,
            context=_context(peer, known),
        )
        try:
            conn.connect()
            if peer.profile == "https_spiffe":
                der = conn.sock.getpeercert(binary_form=True)
                presented = _svid_id(der) if der else None
                if presented != str(peer.expected_endpoint_id):
                    raise FetchFailed(
                        f"endpoint presented {escape(presented or 'no SPIFFE ID')}, "
                        f"expected {peer.expected_endpoint_id}"
                    )
            conn.request("GET", (url.path or "/") + (f"?{url.query}" if url.query else ""))
            response = conn.getresponse()
            body = response.read(2 << 20)
            if response.status != 200:
                raise FetchFailed(f"endpoint answered HTTP {response.status}")
        finally:
            conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}") from None
    try:
        return parse_bundle(body)
    except BadBundle as exc:
        raise FetchFailed(str(exc)) from None


@dataclass
class PeerHealth:
    failures_total: int = 0
    last_success: float = 0.0
    last_error: str = ""


@dataclass
class Federator:
    """The supervisor's federation task: seeds initial bundles, then refreshes each peer."""

    peers: tuple[FederationPeer, ...]
    store: FederationStore
    health: dict[str, PeerHealth] = field(default_factory=dict)

    def seed(self) -> None:
        """Store each peer's initial bundle file unless a bundle is kept from before."""
        for peer in self.peers:
            self.health.setdefault(str(peer.trust_domain), PeerHealth())
            if peer.bundle_file is None or self.store.get(peer.trust_domain) is not None:
                continue
            try:
                doc = parse_bundle(peer.bundle_file.read_bytes())
            except (OSError, BadBundle) as exc:
                raise ConfigError(
                    f"--federate-with {peer.trust_domain}: bundle file {peer.bundle_file}: {exc}"
                ) from None
            self.store.put(peer.trust_domain, doc)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for peer in self.peers:
                group.create_task(self._follow(peer))

    async def refresh_once(self, peer: FederationPeer) -> float:
        """One fetch; returns the seconds until the next. The known bundle survives a failure."""
        health = self.health.setdefault(str(peer.trust_domain), PeerHealth())
        known = self.store.get(peer.trust_domain)
        try:
            doc = await asyncio.to_thread(fetch_bundle, peer, known)
            await asyncio.to_thread(self.store.put, peer.trust_domain, doc)
        except FetchFailed as exc:
            health.failures_total += 1
            if str(exc) != health.last_error:
                log.warning(
                    "federation: bundle of %s not refreshed (keeping the last one): %s",
                    peer.trust_domain,
                    exc,
                )
            health.last_error = str(exc)
            return -1.0
        if health.last_error:
            log.info("federation: bundle of %s refreshed again", peer.trust_domain)
        health.last_error = ""
        health.last_success = time.time()
        hint = refresh_hint_of(doc) or DEFAULT_REFRESH_S
        return min(MAX_REFRESH_S, max(MIN_REFRESH_S, hint))

    async def _follow(self, peer: FederationPeer) -> None:
        backoff = MIN_REFRESH_S
        while True:
            wait = await self.refresh_once(peer)
            if wait < 0:
                wait, backoff = backoff, min(MAX_BACKOFF_S, backoff * 2)
            else:
                backoff = MIN_REFRESH_S
            await asyncio.sleep(wait)

    def exposition(self) -> str:
        failures = "bulwark_federation_fetch_failures_total"
        success = "bulwark_federation_last_success_timestamp_seconds"
        lines = [
            f"# HELP {failures} Failed fetches of a federated trust domain's bundle",
            f"# TYPE {failures} counter",
        ]
        lines += [
            f'{failures}{{trust_domain="{td}"}} {h.failures_total}' for td, h in self.health.items()
        ]
        lines += [
            f"# HELP {success} When a federated bundle was last fetched (unix seconds)",
            f"# TYPE {success} gauge",
        ]
        lines += [
            f'{success}{{trust_domain="{td}"}} {h.last_success:.3f}'
            for td, h in self.health.items()
        ]
        return "\n".join(lines) + "\n" if self.health else ""
