"""The SPIFFE Workload API (X.509 half) on the agent's socket, as SPIRE serves it.

`FetchX509SVID` and `FetchX509Bundles` stream the full state: the first
message as soon as the agent holds a certificate, then one per change.
Every call must carry `workload.spiffe.io: true`. JWT-SVIDs are not issued.
Handlers are registered directly under the standard's unqualified service
name, with deserializers that turn a request that is not valid protobuf into
INVALID_ARGUMENT (see `agent.workload_proto`, `agent.grpc_util.tolerant`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from agent.cache import SecretCache, Snapshot
from agent.errors import AgentError
from agent.grpc_util import abort_with, require_decoded, tolerant
from agent.metrics import AgentMetrics
from agent.workload_proto import SECURITY_HEADER, SERVICE, workload_pb2
from certs.spiffe_id import TrustDomain

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class MissingSecurityHeader(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class JwtNotSupported(AgentError):
    code = grpc.StatusCode.UNIMPLEMENTED


_JWT_MESSAGE = (
    "JWT-SVIDs are not issued yet by the Bulwark agent; use the X.509-SVID RPCs "
    "(FetchX509SVID, FetchX509Bundles)"
)


class WorkloadApiService:
    """FetchX509SVID / FetchX509Bundles from the secret cache."""

    def __init__(
        self, *, cache: SecretCache, metrics: AgentMetrics, trust_domain: TrustDomain
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._trust_domain = trust_domain
        self._pb = workload_pb2()

    async def FetchX509SVID(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_request(request, context)
        last: tuple[str, str] | None = None
        async for snapshot in self._snapshots():
            svid, roots = snapshot.svid, snapshot.roots
            if svid is None or svid.spiffe_id is None or roots is None:
                continue
            state = (svid.version, roots.version)
            if state == last:
                continue
            last = state
            self._metrics.inc("sds_push_count", resource_name="workload-api:x509-svid")
            yield self._pb.X509SVIDResponse(
                svids=[
                    self._pb.X509SVID(
                        spiffe_id=str(svid.spiffe_id),
                        x509_svid=svid.svid_chain_der(),
                        x509_svid_key=svid.key_der,
                        bundle=roots.der,
                    )
                ]
            )

    async def FetchX509Bundles(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_request(request, context)
        last = ""
        async for snapshot in self._snapshots():
            roots = snapshot.roots
            if roots is None or roots.version == last:
                continue
            last = roots.version
            trust_domain = self._trust_domain
            if snapshot.svid is not None and snapshot.svid.spiffe_id is not None:
                trust_domain = snapshot.svid.spiffe_id.trust_domain
            self._metrics.inc("sds_push_count", resource_name="workload-api:x509-bundles")
            yield self._pb.X509BundlesResponse(bundles={trust_domain.id: roots.der})

    async def FetchJWTSVID(self, request: Any, context: Context) -> Any:
        await _check_request(request, context)
        await abort_with(context, JwtNotSupported(_JWT_MESSAGE))

    async def FetchJWTBundles(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_request(request, context)
        await abort_with(context, JwtNotSupported(_JWT_MESSAGE))
        yield None  # pragma: no cover (makes this an async generator, as the RPC streams)

    async def ValidateJWTSVID(self, request: Any, context: Context) -> Any:
        await _check_request(request, context)
        await abort_with(context, JwtNotSupported(_JWT_MESSAGE))

    async def _snapshots(self) -> AsyncIterator[Snapshot]:
        box = self._cache.subscribe()
        try:
            while (snapshot := await box.get()) is not None:
                yield snapshot
        finally:
            self._cache.unsubscribe(box)


async def _check_request(request: Any, context: Context) -> None:
    try:
        require_decoded(request)
    except AgentError as exc:
        await abort_with(context, exc)
    await _check_header(context)


async def _check_header(context: Context) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get(SECURITY_HEADER) != "true":
        await abort_with(
            context,
            MissingSecurityHeader(
                f"security header missing from request: Workload API calls must carry "
                f"metadata '{SECURITY_HEADER}: true'"
            ),
        )


def add_to_server(service: WorkloadApiService, server: grpc.aio.Server) -> None:
    """Register the five RPCs of `SpiffeWorkloadAPI` on `server`."""
    pb = workload_pb2()

    def stream(method: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(
            method, request_deserializer=tolerant(req), response_serializer=resp.SerializeToString
        )

    def unary(method: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=tolerant(req), response_serializer=resp.SerializeToString
        )

    handlers = {
        "FetchX509SVID": stream(service.FetchX509SVID, pb.X509SVIDRequest, pb.X509SVIDResponse),
        "FetchX509Bundles": stream(
            service.FetchX509Bundles, pb.X509BundlesRequest, pb.X509BundlesResponse
        ),
        "FetchJWTSVID": unary(service.FetchJWTSVID, pb.JWTSVIDRequest, pb.JWTSVIDResponse),
        "FetchJWTBundles": stream(
            service.FetchJWTBundles, pb.JWTBundlesRequest, pb.JWTBundlesResponse
        ),
        "ValidateJWTSVID": unary(
            service.ValidateJWTSVID, pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
