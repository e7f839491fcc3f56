"""`bulwark.v1.WorkloadIdentityService` on the CA workers' ports, beside CreateCertificate.

Callers authenticate exactly as for CreateCertificate (the same `Authentication`: a
bearer token or the client certificate), and a JWT-SVID always names the caller's own
SPIFFE ID: this service has no impersonation. Refusals are answered, logged and counted
as CreateCertificate's are (`ca_server.issuance.refusals`); a JWT-SVID is recorded before
it is returned, and an error in the record sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.identity import Caller
from ca_server.issuance.refusals import Call, refusals
from ca_server.issuance.service import (
    CallerAuthentication,
    UndecodableRequest,
    authenticate_call,
    register,
    unary_handler,
)
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import Recorder
from ca_server.spiffe.jwtsvid.keyset import KeyFile, KeyResolver, resolve_pem, signing_key
from ca_server.spiffe.jwtsvid.minter import check_audiences, lifetime, mint
from protos.bulwark.v1 import identity_pb2

SERVICE_NAME = "bulwark.v1.WorkloadIdentityService"
M = TypeVar("M", bound=Message)
Clock = Callable[[], datetime]


Undecodable = UndecodableRequest  # what the request decoders hand over for bytes that are none


class WorkloadIdentityService:
    """MintJWTSVID and FetchTrustBundles for authenticated workloads."""

    def __init__(
        self,
        *,
        authentication: CallerAuthentication,
        key_file: KeyFile,
        bundles: Callable[[], Mapping[str, bytes]],
        trust_domain: str,
        recorder: Recorder | None,
        metrics: CaMetrics,
        events: CaEventLog,
        default_ttl: timedelta,
        max_ttl: timedelta,
        clock: Clock = lambda: datetime.now(UTC),
        resolve: KeyResolver = resolve_pem,
    ) -> None:
        self._resolve = resolve
        self._authn = authentication
        self._key_file = key_file
        self._bundles = bundles
        self._trust_domain = trust_domain
        self._recorder = recorder
        self.metrics = metrics
        self.events = events
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._clock = clock

    @refusals
    async def MintJWTSVID(
        self,
        request: identity_pb2.MintJWTSVIDRequest | Undecodable,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> identity_pb2.MintJWTSVIDResponse:
        if isinstance(request, Undecodable):
            raise request
        call.caller = caller = await self._authenticate(context)
        audiences = check_audiences(list(request.audience))
        ttl = lifetime(request.ttl_seconds, default=self._default_ttl, maximum=self._max_ttl)
        now = self._clock()
        key = signing_key(self._key_file.load().keys, now)
        if key is None:
            raise UpstreamUnavailable("no JWT-SVID signing key is active yet; retry shortly")
        minted = mint(
            key=key, caller=caller, audiences=audiences, ttl=ttl, now=now, resolve=self._resolve
        )
        if self._recorder is not None:
            # failure: INTERNAL, nothing sent (also once the caller's deadline passed)
            await self._recorder.record(minted.entry, within=context.time_remaining())
        self.events.issued(minted.entry, peer=call.peer)
        self.metrics.jwt_svids_issued.inc()
        return identity_pb2.MintJWTSVIDResponse(
            spiffe_id=minted.entry.spiffe_id,
            token=minted.token,
            expires_at=int(minted.expires_at.timestamp()),
        )

    @refusals
    async def FetchTrustBundles(
        self,
        request: identity_pb2.FetchTrustBundlesRequest | Undecodable,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> identity_pb2.FetchTrustBundlesResponse:
        if isinstance(request, Undecodable):
            raise request
        call.caller = await self._authenticate(context)
        return identity_pb2.FetchTrustBundlesResponse(
            trust_domain=self._trust_domain, bundles=dict(self._bundles())
        )

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        try:
            return await authenticate_call(self._authn, context)
        except AuthenticationError:
            self.metrics.auth_failures.inc()
            raise


def add_to_server(service: WorkloadIdentityService, server: grpc.aio.Server) -> None:
    """Register `service` with request deserializers that never raise."""
    handlers = {
        "MintJWTSVID": unary_handler(
            service.MintJWTSVID,
            identity_pb2.MintJWTSVIDRequest,
            identity_pb2.MintJWTSVIDResponse,
            "MintJWTSVIDRequest",
        ),
        "FetchTrustBundles": unary_handler(
            service.FetchTrustBundles,
            identity_pb2.FetchTrustBundlesRequest,
            identity_pb2.FetchTrustBundlesResponse,
            "FetchTrustBundlesRequest",
        ),
    }
    register(server, SERVICE_NAME, handlers)
