"""The SPIFFE Workload API (X.509 half) on the agent's socket, as SPIRE serves it.

`FetchX509SVID` and `FetchX509Bundles` stream the full state: the first
message as soon as the agent holds a certificate, then one per change.
Both carry every federated trust domain's roots from the CA's trust bundles.
`FetchJWTSVID` asks the CA (cached per audience set until half-life),
`FetchJWTBundles` streams the JWT keys of every trust domain and pushes each
change, `ValidateJWTSVID` checks a token against them (`agent.state.jwt_validate`,
loaded by the first validation). Every call must carry `workload.spiffe.io: true`.
Handlers are registered directly under the standard's unqualified service
name, with deserializers that turn a request that is not valid protobuf into
INVALID_ARGUMENT (see `agent.endpoints.workload_proto`, `agent.endpoints.grpc_util.tolerant`).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from agent.endpoints.grpc_util import abort_with, lookup_state, require_decoded, tolerant
from agent.endpoints.workload_proto import SECURITY_HEADER, SERVICE, workload_pb2
from agent.errors import AgentError, BadRequest, SecretUnavailable
from agent.logs import printable
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache, Snapshot
from agent.state.jwt_cache import NotEntitled, audience_key
from agent.state.trust_bundles import TrustBundles
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId

if TYPE_CHECKING:
    from agent.state.identity import StateLookup

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class MissingSecurityHeader(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class WorkloadApiService:
    """The five RPCs, from the caller's identity (`states`): its secret cache and JWT-SVIDs."""

    def __init__(self, *, states: StateLookup, metrics: AgentMetrics) -> None:
        self._states = states
        self._metrics = metrics
        self._pb = workload_pb2()

    async def FetchX509SVID(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_request(request, context)
        last: tuple[str, str, str] | None = None
        cache = (await lookup_state(self._states, context)).cache
        async for snapshot in _snapshots(cache):
            svid, roots = snapshot.svid, snapshot.roots
            if svid is None or svid.spiffe_id is None or roots is None:
                continue
            federated = _federated(snapshot.bundles)
            state = (svid.version, roots.version, _bundles_version(federated))
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
                ],
                federated_bundles=federated,
            )

    async def FetchX509Bundles(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_request(request, context)
        state = await lookup_state(self._states, context)
        last = ""
        async for snapshot in _snapshots(state.cache):
            roots = snapshot.roots
            if roots is None:
                continue
            trust_domain = state.spiffe_id.trust_domain
            if snapshot.svid is not None and snapshot.svid.spiffe_id is not None:
                trust_domain = snapshot.svid.spiffe_id.trust_domain
            bundles = {**_federated(snapshot.bundles), trust_domain.id: roots.der}
            version = _bundles_version(bundles)
            if version == last:
                continue
            last = version
            self._metrics.inc("sds_push_count", resource_name="workload-api:x509-bundles")
            yield self._pb.X509BundlesResponse(bundles=bundles)

    async def FetchJWTSVID(self, request: Any, context: Context) -> Any:
        await _check_request(request, context)
        state = await lookup_state(self._states, context)
        try:
            key = audience_key(list(request.audience))
            _check_entitled(request.spiffe_id, state.spiffe_id)
            minted = await state.jwt_svids.get(key)
        except AgentError as exc:
            await abort_with(context, exc)
        self._metrics.inc("sds_push_count", resource_name="workload-api:jwt-svid")
        return self._pb.JWTSVIDResponse(
            svids=[self._pb.JWTSVID(spiffe_id=minted.spiffe_id, svid=minted.token)]
        )

    async def FetchJWTBundles(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_request(request, context)
        last = ""
        state = await lookup_state(self._states, context)
        async for snapshot in _snapshots(state.cache):
            if snapshot.bundles is None or snapshot.bundles.jwt_version == last:
                continue
            last = snapshot.bundles.jwt_version
            self._metrics.inc("sds_push_count", resource_name="workload-api:jwt-bundles")
            yield self._pb.JWTBundlesResponse(bundles=snapshot.bundles.jwt_bundles())

    async def ValidateJWTSVID(self, request: Any, context: Context) -> Any:
        await _check_request(request, context)
        from agent.state.jwt_validate import validate_jwt_svid  # loaded by the first validation

        bundles = (await lookup_state(self._states, context)).cache.snapshot.bundles
        try:
            if bundles is None:
                raise SecretUnavailable("no JWT bundles from the CA yet; try again shortly")
            spiffe_id, claims = validate_jwt_svid(request.svid, request.audience, bundles)
        except AgentError as exc:
            await abort_with(context, exc)
        response = self._pb.ValidateJWTSVIDResponse(spiffe_id=str(spiffe_id))
        try:
            response.claims.update(claims)
        except (ValueError, TypeError, OverflowError):
            await abort_with(context, BadRequest("the JWT-SVID's claims do not fit a Struct"))
        return response


def _check_entitled(requested: str, own: SpiffeId) -> None:
    """A caller has one identity, `own`: a request for another is PERMISSION_DENIED."""
    if not requested:
        return
    try:
        wanted = SpiffeId.parse(requested)
    except InvalidSpiffeId as exc:
        raise BadRequest(f"spiffe_id {printable(requested)!r}: {exc}") from None
    if wanted != own:
        raise NotEntitled(
            f"this workload is not entitled to {printable(requested)!r}; its identity is {own}"
        )


async def _snapshots(cache: SecretCache) -> AsyncIterator[Snapshot]:
    box = cache.subscribe()
    try:
        while (snapshot := await box.get()) is not None:
            yield snapshot
    finally:
        cache.unsubscribe(box)


def _federated(bundles: TrustBundles | None) -> dict[str, bytes]:
    return bundles.federated_der() if bundles is not None else {}


def _bundles_version(bundles: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, der in sorted(bundles.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(der).digest())
    return digest.hexdigest()


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
