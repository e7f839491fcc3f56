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
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from ca_server.errors import ConfigError
from ca_server.http_get import HttpGetFailed, http_get
from ca_server.logs import escape
from ca_server.spiffe.federation.peers import FederationPeer
from ca_server.spiffe.federation.store import FederationStore, foreign_bundle
from certs.errors import InvalidBundle
from certs.spiffe_bundle import MAX_BUNDLE_BYTES, REFUSAL_REASONS, SpiffeBundle

log = logging.getLogger(__name__)
FETCH_DEADLINE_S = 10.0  # the whole fetch: connect, TLS, headers and body
MIN_REFRESH_S = 1.0
MAX_REFRESH_S = 3600.0
DEFAULT_REFRESH_S = 300.0
MAX_BACKOFF_S = 300.0
# The `reason` label of bulwark_federation_bundle_refusals_total: the document's refusals
# and an endpoint too slow to send its whole answer within FETCH_DEADLINE_S.
FEDERATION_REFUSALS = (*REFUSAL_REASONS, "too_slow")


class FetchFailed(Exception):
    """A bundle endpoint could not be reached, authenticated or understood. `reason` (one of
    `FEDERATION_REFUSALS`) is set when the bundle was refused, not merely not fetched."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def _svid_id(der: bytes) -> str | None:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None


def _context(peer: FederationPeer, known: SpiffeBundle | None) -> ssl.SSLContext:
    if peer.profile == "https_web":
        return ssl.create_default_context()
    if known is None or not known.x509_authorities:
        raise FetchFailed("no known X.509 authority to authenticate the https_spiffe endpoint with")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the SVID names a SPIFFE ID, checked below, not a host
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=known.roots_pem)
    return ctx


def _endpoint_check(peer: FederationPeer) -> Callable[[bytes | None], None]:
    def check(der: bytes | None) -> None:
        if peer.profile != "https_spiffe":
            return
        presented = _svid_id(der) if der else None
        if presented != str(peer.expected_endpoint_id):
            raise FetchFailed(
                f"endpoint presented {escape(presented or 'no SPIFFE ID')}, "
                f"expected {peer.expected_endpoint_id}"
            )

    return check


async def fetch_bundle(
    peer: FederationPeer, known: SpiffeBundle | None, *, deadline_s: float = FETCH_DEADLINE_S
) -> SpiffeBundle:
    """GET the peer's bundle within `deadline_s` in all; `FetchFailed` saying why it could not
    be used (with a `reason` when the bundle was refused or the endpoint was too slow)."""
    context = _context(peer, known)
    try:
        async with asyncio.timeout(deadline_s):
            body = await http_get(
                peer.url, context, max_body=MAX_BUNDLE_BYTES, check_peer=_endpoint_check(peer)
            )
    except TimeoutError:
        raise FetchFailed(
            f"the endpoint did not send its whole answer within {deadline_s:g} s "
            "(connect, TLS handshake, headers and body)",
            reason="too_slow",
        ) from None
    except (OSError, EOFError, HttpGetFailed) as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}") from None
    try:
        return foreign_bundle(body)
    except InvalidBundle as exc:
        raise FetchFailed(str(exc), reason=exc.reason) from None


@dataclass
class PeerHealth:
    failures_total: int = 0
    last_success: float = 0.0
    last_error: str = ""
    refusals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FEDERATION_REFUSALS, 0))


@dataclass
class Federator:
    """The supervisor's federation task: seeds initial bundles, then refreshes each peer."""

    peers: tuple[FederationPeer, ...]
    store: FederationStore
    health: dict[str, PeerHealth] = field(default_factory=dict)
    fetch_deadline_s: float = FETCH_DEADLINE_S

    def seed(self) -> None:
        """Store each peer's initial bundle file unless a bundle is kept from before."""
        for peer in self.peers:
            self.health.setdefault(str(peer.trust_domain), PeerHealth())
            if peer.bundle_file is None or self.store.get(peer.trust_domain) is not None:
                continue
            try:
                bundle = foreign_bundle(peer.bundle_file.read_bytes())
            except (OSError, InvalidBundle) as exc:
                raise ConfigError(
                    f"--federate-with {peer.trust_domain}: bundle file {peer.bundle_file}: {exc}"
                ) from None
            self.store.put(peer.trust_domain, bundle)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for peer in self.peers:
                group.create_task(self._follow(peer))

    async def refresh_once(self, peer: FederationPeer) -> float:
        """One fetch; returns the seconds until the next. The known bundle survives a failure."""
        health = self.health.setdefault(str(peer.trust_domain), PeerHealth())
        known = await asyncio.to_thread(self.store.get, peer.trust_domain)
        try:
            bundle = await fetch_bundle(peer, known, deadline_s=self.fetch_deadline_s)
            await asyncio.to_thread(self._accept, peer, bundle)
        except FetchFailed as exc:
            self._failed(peer, health, exc)
            return -1.0
        if health.last_error:
            log.info("federation: bundle of %s refreshed again", peer.trust_domain)
        health.last_error = ""
        health.last_success = time.time()
        hint = bundle.refresh_hint or DEFAULT_REFRESH_S
        return min(MAX_REFRESH_S, max(MIN_REFRESH_S, hint))

    def _accept(self, peer: FederationPeer, bundle: SpiffeBundle) -> None:
        try:
            self.store.accept(peer.trust_domain, bundle)
        except InvalidBundle as exc:
            raise FetchFailed(str(exc), reason=exc.reason) from None

    def _failed(self, peer: FederationPeer, health: PeerHealth, exc: FetchFailed) -> None:
        """Count; log once per distinct cause (a refusal names its reason)."""
        health.failures_total += 1
        if exc.reason is not None:
            health.refusals[exc.reason] = health.refusals.get(exc.reason, 0) + 1
        if str(exc) != health.last_error:
            what = f"refused ({exc.reason})" if exc.reason else "not refreshed"
            log.warning(
                "federation: bundle of %s %s (keeping the last one): %s",
                peer.trust_domain,
                what,
                exc,
            )
        health.last_error = str(exc)

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
        refusals = "bulwark_federation_bundle_refusals_total"
        lines += [
            f"# HELP {refusals} Bundles of a federated trust domain refused (the last one is kept)",
            f"# TYPE {refusals} counter",
        ]
        lines += [
            f'{refusals}{{trust_domain="{td}",reason="{reason}"}} {count}'
            for td, h in self.health.items()
            for reason, count in h.refusals.items()
        ]
        return "\n".join(lines) + "\n" if self.health else ""
