"""The identities a node agent serves: one state per identity, kept while something holds it.

One certificate per identity per node: every pod of a service account (every process of a
mapped uid) shares it, as ztunnel and SPIRE's agent share theirs. An identity's state is
created by its first holder (a pod, or a process with the unix attestor), renewed like the
per-pod agent's (`agent.state.renewal`, one task each), and freed when its last holder
leaves: its streams end and its key and certificate are dropped. What every identity shares
(the root file's roots, the CA's trust bundles) lives in one `shared` cache and is copied into
each identity's cache when it changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from agent.metrics import AgentMetrics
from agent.node.attestation import Attestation
from agent.node.errors import NodeLimit
from agent.state.cache import SecretCache, Snapshot
from agent.state.identity import IdentityState
from agent.state.jwt_cache import AudienceKey, JwtSvidCache
from agent.state.renewal import Clock, RenewalPolicy, Renewer
from agent.state.svid import Svid
from agent.upstream.identity_client import MintedJwt
from certs.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

JwtMinter = Callable[[SpiffeId, SecretCache], Callable[[AudienceKey], Awaitable[MintedJwt]]]


class NodeIdentity:
    """One identity: what its callers are answered from, its renewal, who holds it."""

    __slots__ = ("holders", "renewer", "state", "tasks")

    def __init__(self, state: IdentityState, renewer: Renewer) -> None:
        self.state = state
        self.renewer = renewer
        self.holders: dict[str, str] = {}  # holder -> its name, for the status page
        self.tasks: list[asyncio.Task[None]] = []


class IdentityRegistry:
    """Creates, shares and frees identities; every method runs on the event loop."""

    def __init__(
        self,
        *,
        issue: Callable[[SpiffeId], Awaitable[Svid]],
        mint_jwt: JwtMinter,
        shared: SecretCache,
        clock: Clock,
        rng: random.Random,
        policy: RenewalPolicy,
        metrics: AgentMetrics,
        max_identities: int,
    ) -> None:
        self._issue = issue
        self._mint_jwt = mint_jwt
        self._shared = shared
        self._clock = clock
        self._rng = rng
        self._policy = policy
        self._metrics = metrics
        self._max = max_identities
        self._identities: dict[SpiffeId, NodeIdentity] = {}
        self._holder_ids: dict[str, SpiffeId] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._identities)

    def get(self, spiffe_id: SpiffeId) -> NodeIdentity | None:
        return self._identities.get(spiffe_id)

    def holds(self, holder: str) -> bool:
        return holder in self._holder_ids

    def acquire(self, attestation: Attestation) -> IdentityState:
        """The state of the attested identity, created on first use; `attestation.holder`
        keeps it until `release`. `NodeLimit` when a new identity would exceed the bound."""
        spiffe_id, holder = attestation.spiffe_id, attestation.holder
        ident = self._identities.get(spiffe_id)
        if ident is None:
            if self._closed:
                raise NodeLimit("the node agent is shutting down")
            if len(self._identities) >= self._max:
                raise NodeLimit(
                    f"the node agent already serves {self._max} identities; {spiffe_id} refused "
                    "(--max-identities)"
                )
            ident = self._create(spiffe_id)
        previous = self._holder_ids.get(holder)
        if previous is not None and previous != spiffe_id:
            self.release(holder)  # a holder has one identity: the newer attestation wins
            return self.acquire(attestation)
        ident.holders[holder] = attestation.holder_name
        self._holder_ids[holder] = spiffe_id
        return ident.state

    def release(self, holder: str) -> None:
        """`holder` left (pod gone, process exited); the identity's last holder frees it."""
        spiffe_id = self._holder_ids.pop(holder, None)
        if spiffe_id is None:
            return
        ident = self._identities.get(spiffe_id)
        if ident is None:
            return
        ident.holders.pop(holder, None)
        if not ident.holders:
            self._free(spiffe_id, ident)

    def _create(self, spiffe_id: SpiffeId) -> NodeIdentity:
        cache = SecretCache()
        snapshot = self._shared.snapshot
        cache.set_file_roots(snapshot.file_roots)
        if snapshot.bundles is not None:
            cache.set_trust_bundles(snapshot.bundles)
        state = IdentityState(
            spiffe_id=spiffe_id,
            cache=cache,
            jwt_svids=JwtSvidCache(self._mint_jwt(spiffe_id, cache)),
        )
        renewer = Renewer(
            issue=lambda: self._issue(spiffe_id),
            cache=cache,
            clock=self._clock,
            rng=self._rng,
            policy=self._policy,
            metrics=self._metrics,
        )
        ident = NodeIdentity(state, renewer)
        ident.tasks = [
            asyncio.create_task(renewer.run(), name=f"renewal {spiffe_id}"),
            asyncio.create_task(renewer.follow_roots(), name=f"roots {spiffe_id}"),
        ]
        self._identities[spiffe_id] = ident
        log.info("serving %s (%d identities)", spiffe_id, len(self._identities))
        return ident

    def _free(self, spiffe_id: SpiffeId, ident: NodeIdentity) -> None:
        for task in ident.tasks:
            task.cancel()
        ident.state.cache.close()  # its streams end with OK
        ident.state.jwt_svids.forget()
        del self._identities[spiffe_id]
        log.info("%s has no holder left: its certificate is dropped", spiffe_id)

    async def run(self) -> None:
        """Copy what the shared cache holds into every identity; on cancel, free them all."""
        box = self._shared.subscribe()
        try:
            while (snapshot := await box.get()) is not None:
                for ident in list(self._identities.values()):
                    _share(snapshot, ident.state.cache)
        finally:
            self._shared.unsubscribe(box)
            self.close()

    def retry_failed(self) -> None:
        """SIGHUP: every identity whose last renewal failed asks again now."""
        for ident in self._identities.values():
            if ident.renewer.failures:
                ident.renewer.retry_now()

    def close(self) -> None:
        self._closed = True
        for spiffe_id, ident in list(self._identities.items()):
            self._free(spiffe_id, ident)
        self._holder_ids.clear()

    def describe(self, now: datetime) -> list[dict[str, Any]]:
        """Every identity with its holders and certificate: the status page's list."""
        out = []
        for spiffe_id, ident in sorted(self._identities.items(), key=lambda kv: str(kv[0])):
            snapshot = ident.state.cache.snapshot
            svid = snapshot.svid
            out.append(
                {
                    "spiffe_id": str(spiffe_id),
                    "holders": sorted(ident.holders.values()),
                    "serial": svid.serial if svid else None,
                    "not_after": svid.not_after.isoformat() if svid else None,
                    "seconds_left": int((svid.not_after - now).total_seconds()) if svid else None,
                    "error": snapshot.svid_error or None,
                    "renewal_due": ident.renewer.due.isoformat() if svid else None,
                }
            )
        return out


def _share(snapshot: Snapshot, cache: SecretCache) -> None:
    cache.set_file_roots(snapshot.file_roots)
    if snapshot.bundles is not None:
        cache.set_trust_bundles(snapshot.bundles)
