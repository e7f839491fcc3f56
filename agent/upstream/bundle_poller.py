"""Keeps the cache's trust bundles current: `FetchTrustBundles` every refresh hint.

The interval is the shortest `spiffe_refresh_hint` of the bundles held (own or
federated: a foreign domain may rotate faster than ours), capped by
`BULWARK_TRUST_BUNDLE_REFRESH`; the cache publishes only a changed bundle, so
a JWT key rotation or a federated root change reaches the Workload API streams
and the SDS `ROOTCA` within one interval, and an unchanged poll pushes nothing.
A CA without the service (UNIMPLEMENTED: Istio's, or an older Bulwark) gets
the own trust domain with no JWT key, so JWT bundle streams still answer.
A document the agent refuses (`certs.spiffe_bundle`'s checks) leaves that domain's last
good bundle in force; each new refusal is logged once, naming the domain and the reason,
and counted in `istio_agent_trust_bundle_refusals_total{reason}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import grpc

from agent.errors import CaRequestFailed
from agent.logs import printable
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache
from agent.state.trust_bundles import Refusal, TrustBundles, intake
from agent.upstream.identity_client import IdentityClient
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

MIN_INTERVAL = timedelta(milliseconds=50)


class BundlePoller:
    """One task: poll, publish, sleep; errors are logged once per distinct cause."""

    def __init__(
        self,
        client: IdentityClient,
        cache: SecretCache,
        *,
        trust_domain: TrustDomain,
        max_interval: timedelta,
        metrics: AgentMetrics,
    ) -> None:
        self._client = client
        self._cache = cache
        self._metrics = metrics
        self._refused: dict[str, str] = {}  # domain -> digest of its last refused document
        self._trust_domain = trust_domain
        self._max_interval = max_interval
        self._last_error = ""
        self._wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            interval = await self.poll()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval.total_seconds())

    def poll_now(self) -> None:
        """Poll at once (SIGHUP)."""
        self._wake.set()

    async def poll(self) -> timedelta:
        """Fetch once and publish; the time until the next poll."""
        try:
            ca_domain, documents = await self._client.trust_bundles()
        except CaRequestFailed as exc:
            if exc.grpc_code == grpc.StatusCode.UNIMPLEMENTED:
                self._note(
                    "CA serves no trust bundles (no WorkloadIdentityService); JWT "
                    "bundles hold the own trust domain without keys",
                    info=True,
                )
                self._cache.set_trust_bundles(TrustBundles(trust_domain=self._trust_domain))
            else:
                self._note(f"trust bundles not refreshed: {exc.public_message}")
            return self._max_interval
        if ca_domain and ca_domain != self._trust_domain.name:
            self._note(
                f"CA trust domain {printable(ca_domain)!r} is not the agent's "
                f"{self._trust_domain.name!r}; its bundles are not used"
            )
            return self._max_interval
        bundles, refusals = intake(self._trust_domain, documents, self._cache.snapshot.bundles)
        self._note_refusals(refusals)
        self._cache.set_trust_bundles(bundles)
        if self._last_error:
            log.info("trust bundles refreshed again")
        self._last_error = ""
        hint = bundles.refresh_hint
        interval = min(hint, self._max_interval) if hint else self._max_interval
        return max(interval, MIN_INTERVAL)

    def _note_refusals(self, refusals: tuple[Refusal, ...]) -> None:
        """Count and log each refusal of a document not refused before (polls repeat them)."""
        refused = {r.name: r.digest for r in refusals}
        for refusal in refusals:
            if self._refused.get(refusal.name) == refusal.digest:
                continue
            self._metrics.inc("trust_bundle_refusals_total", reason=refusal.reason)
            log.warning(
                "trust bundle of %s refused (%s), keeping its last good bundle if any: %s",
                refusal.name,
                refusal.reason,
                refusal.message,
            )
        self._refused = refused

    def _note(self, message: str, *, info: bool = False) -> None:
        if message != self._last_error:
            (log.info if info else log.warning)("%s", message)
        self._last_error = message
