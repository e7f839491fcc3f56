"""The agent's client of the CA's `bulwark.v1.WorkloadIdentityService`: JWT-SVIDs and bundles.

Everything the agent asks the CA beyond `CreateCertificate` goes through
`IdentityClient`. It rides on the CSR client's connection settings (same
address, TLS root, client certificate and bearer token, see
`CaClient.open_channel`), so the CA authenticates both calls alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from grpc import aio

from agent.errors import CaRefusedArgument, CaRequestFailed, CaResponseInvalid
from agent.metrics import AgentMetrics
from agent.upstream.caclient import RETRYABLE, CaClient
from certs.spiffe_id import SpiffeId
from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc

log = logging.getLogger(__name__)

ATTEMPTS = 3
RETRY_WAIT_S = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class MintedJwt:
    """A JWT-SVID as the CA returned it, with the agent's clock at receipt (unix seconds)."""

    spiffe_id: str
    token: str
    expires_at: float
    received_at: float

    def fresh(self, now: float) -> bool:
        """Still worth handing out: before half its lifetime (the agent's renewal rule)."""
        return now < self.received_at + (self.expires_at - self.received_at) / 2


class IdentityClient:
    """`MintJWTSVID` and `FetchTrustBundles` on the CA the CSR client talks to."""

    def __init__(
        self,
        ca: CaClient,
        *,
        expected: SpiffeId,
        timeout: timedelta,
        metrics: AgentMetrics,
        ca_addr: str,
    ) -> None:
        self._ca = ca
        self._expected = expected
        self._timeout = timeout.total_seconds()
        self._metrics = metrics
        self._ca_addr = ca_addr

    async def mint_jwt(self, audiences: Sequence[str], ttl: timedelta | None = None) -> MintedJwt:
        """A JWT-SVID for the agent's identity and `audiences`, or `CaRequestFailed`."""
        request = identity_pb2.MintJWTSVIDRequest(
            audience=list(audiences), ttl_seconds=int(ttl.total_seconds()) if ttl else 0
        )
        response = await self._call("MintJWTSVID", request)
        now = time.time()
        if response.spiffe_id != str(self._expected):
            raise CaResponseInvalid(
                f"CA minted a JWT-SVID for {response.spiffe_id!r}, not for {self._expected}"
            )
        if not response.token or response.expires_at <= now:
            raise CaResponseInvalid("CA returned an empty or already expired JWT-SVID")
        return MintedJwt(
            spiffe_id=response.spiffe_id,
            token=response.token,
            expires_at=float(response.expires_at),
            received_at=now,
        )

    async def trust_bundles(self) -> tuple[str, dict[str, bytes]]:
        """The CA's trust domain and its bundle documents (name -> SPIFFE bundle JSON)."""
        response = await self._call("FetchTrustBundles", identity_pb2.FetchTrustBundlesRequest())
        return response.trust_domain, dict(response.bundles)

    def _open_channel(self) -> aio.Channel:
        """The channel of one call (the CSR's connection settings)."""
        return self._ca.open_channel()

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._ca.call_metadata()

    async def _call(self, method: str, request: Any) -> Any:
        kind = "jwt" if method == "MintJWTSVID" else "bundles"
        self._metrics.inc("num_outgoing_requests", request_type=kind)
        channel = self._open_channel()
        try:
            stub = identity_pb2_grpc.WorkloadIdentityServiceStub(channel)
            return await self._with_retries(getattr(stub, method), request, kind)
        finally:
            await channel.close()

    async def _with_retries(self, rpc: Any, request: Any, kind: str) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await rpc(request, metadata=self._call_metadata(), timeout=self._timeout)
            except aio.AioRpcError as exc:
                code = exc.code()
                if code in RETRYABLE and attempt < ATTEMPTS:
                    await asyncio.sleep(RETRY_WAIT_S * attempt)
                    continue
                self._metrics.inc("num_failed_outgoing_requests", request_type=kind)
                message = f"CA {self._ca_addr} answered {code.name}: {exc.details()}"
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise CaRefusedArgument(message, code, definitive=True) from None
                hint = ""
                if code not in (grpc.StatusCode.UNIMPLEMENTED, *RETRYABLE):
                    hint = await self._ca.explain(code, exc.details() or "")
                raise CaRequestFailed(message + hint, code) from None
        raise AssertionError("unreachable: the loop returns or raises")
