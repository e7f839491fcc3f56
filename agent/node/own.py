"""The node agent's own identity: what it authenticates to the CA with.

First its own service-account token (`--token-path`, re-read for every call); then, outside
Kubernetes, its own certificate: asked for with that token (its own identity, no
impersonation), renewed like any SVID, and presented on the CA's client-certificate port
(`--mtls-ca-addr`) for every later call, so a short-lived bootstrap token is needed only at
the start, as the per-pod agent's `PROV_CERT` works on a VM. With the k8s attestor the token
stays: the CA binds impersonation to the node through the token's pod (TokenReview), which a
certificate does not carry.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import NamedTuple

from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache
from agent.state.renewal import Clock, RenewalPolicy, Renewer
from agent.state.svid import Svid, svid_from_response
from agent.upstream.caclient import CaClient
from certs.csr import build_csr
from certs.keys import generate_key
from certs.pem import bundle_pem, sha256_fingerprint

# Stop presenting the own certificate this long before it expires (fall back to the token).
EXPIRY_MARGIN = timedelta(minutes=1)


class Credential(NamedTuple):
    """A client certificate to present to the CA: key and chain in PEM, and its serial."""

    key_pem: bytes
    chain_pem: bytes
    serial: str


class OwnIdentity:
    """The node agent's own certificate, when it is to be used; `credential()` says which."""

    def __init__(
        self,
        *,
        ca: CaClient,
        config: AgentConfig,
        clock: Clock,
        rng: random.Random,
        metrics: AgentMetrics,
    ) -> None:
        self._ca = ca
        self._config = config
        self._clock = clock
        # Outside Kubernetes, and only with the CA's client-certificate port to present it on.
        self.enabled = config.attestor != "k8s" and bool(config.mtls_ca_addr)
        self.cache = SecretCache()
        self.renewer = Renewer(
            issue=self._issue,
            cache=self.cache,
            clock=clock,
            rng=rng,
            policy=RenewalPolicy(grace_ratio=config.grace_ratio, grace_jitter=config.grace_jitter),
            metrics=metrics,
        )

    def credential(self) -> Credential | None:
        """The own certificate while it may be presented, else None (use the token)."""
        svid = self.cache.snapshot.svid
        if not self.enabled or svid is None:
            return None
        if svid.not_after - self._clock.now() < EXPIRY_MARGIN:
            return None
        return _credential(svid)

    async def run(self) -> None:
        if self.enabled:
            await self.renewer.run()

    async def _issue(self) -> Svid:
        """A new key and the CA's certificate for the node agent itself (no impersonation)."""
        config = self._config
        kind = config.key_type()
        if kind.value.startswith("rsa-"):
            key = await asyncio.to_thread(generate_key, kind)
        else:
            key = generate_key(kind)
        csr = build_csr(key, config.spiffe_id)
        credential = self.credential()
        if credential is None:
            chain = await self._ca.sign(csr, config.secret_ttl)
        else:
            channel = self._ca.open_channel(client=(credential.key_pem, credential.chain_pem))
            try:
                chain = await self._ca.sign(csr, config.secret_ttl, channel=channel, token=False)
            finally:
                await channel.close()
        return svid_from_response(
            chain_pems=chain, key=key, expected=config.spiffe_id, now=self._clock.now()
        )


def _credential(svid: Svid) -> Credential:
    roots = set(svid.roots.fingerprints())
    chain = [c for c in svid.chain if sha256_fingerprint(c) not in roots]
    return Credential(svid.key_pem, bundle_pem(chain).encode(), svid.serial)
