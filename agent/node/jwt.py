"""JWT-SVIDs for a node agent's workloads: asked of the CA as the workload itself.

The CA's `MintJWTSVID` has no impersonation: a JWT-SVID always names the caller. So the node
agent calls it on the CA's client-certificate port (`BULWARK_MTLS_CA_ADDR`) presenting the
workload's own X.509-SVID, which it holds, and the CA sees that workload. Without that port
the Workload API's `FetchJWTSVID` answers UNAVAILABLE saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from grpc import aio

from agent.errors import SecretUnavailable
from agent.upstream.identity_client import IdentityClient, MintedJwt
from certs.pem import bundle_pem

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from agent.metrics import AgentMetrics
    from agent.state.cache import SecretCache
    from agent.state.jwt_cache import AudienceKey
    from agent.upstream.caclient import CaClient
    from certs.spiffe_id import SpiffeId


class WorkloadJwtClient(IdentityClient):
    """`IdentityClient` whose calls present one workload's certificate and no token."""

    def __init__(
        self,
        ca: CaClient,
        *,
        cache: SecretCache,
        expected: SpiffeId,
        timeout: timedelta,
        metrics: AgentMetrics,
        mtls_addr: str,
    ) -> None:
        super().__init__(ca, expected=expected, timeout=timeout, metrics=metrics, ca_addr=mtls_addr)
        self._cache = cache
        self._mtls_addr = mtls_addr

    async def mint_jwt(self, audiences: Sequence[str], ttl: timedelta | None = None) -> MintedJwt:
        """As `IdentityClient.mint_jwt`, once the workload's X.509-SVID exists (a caller's
        first call may have just created its identity)."""
        await _first_svid(self._cache, self._timeout)
        return await super().mint_jwt(audiences, ttl)

    def _open_channel(self) -> aio.Channel:
        if not self._mtls_addr:
            raise SecretUnavailable(
                "this node agent mints JWT-SVIDs as each workload over the CA's client-"
                "certificate port, and none is configured (BULWARK_MTLS_CA_ADDR)"
            )
        svid = self._cache.snapshot.svid
        if svid is None:
            raise SecretUnavailable(
                "no X.509-SVID yet for this workload, which the CA needs to mint its JWT-SVID"
            )
        roots = set(svid.roots.fingerprints())
        from certs.pem import sha256_fingerprint

        chain = [c for c in svid.chain if sha256_fingerprint(c) not in roots]
        return self._ca.open_channel(client=(svid.key_pem, bundle_pem(chain).encode()))

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._ca.call_metadata(token=False)


async def _first_svid(cache: SecretCache, timeout: float) -> None:
    """Wait (at most `timeout`) until `cache` holds an SVID or a reason it has none."""
    box = cache.subscribe()
    try:
        async with asyncio.timeout(timeout):
            while (snapshot := await box.get()) is not None:
                if snapshot.svid is not None or snapshot.svid_error:
                    return
    except TimeoutError:
        return
    finally:
        cache.unsubscribe(box)


def jwt_minter(
    ca: CaClient, *, timeout: timedelta, metrics: AgentMetrics, mtls_addr: str
) -> Callable[[SpiffeId, SecretCache], Callable[[AudienceKey], Awaitable[MintedJwt]]]:
    """The registry's factory: one identity's `mint(audiences)`."""

    def for_identity(
        spiffe_id: SpiffeId, cache: SecretCache
    ) -> Callable[[AudienceKey], Awaitable[MintedJwt]]:
        client = WorkloadJwtClient(
            ca,
            cache=cache,
            expected=spiffe_id,
            timeout=timeout,
            metrics=metrics,
            mtls_addr=mtls_addr,
        )
        return client.mint_jwt

    return for_identity
