"""The Workload API answers each call from the state its lookup gives (`agent.state.identity`).

The per-pod agent has one identity (`single`). Here a lookup that picks one of two identities
by a request header shows that the servicer holds no identity of its own: each caller gets
its own JWT-SVID and is refused the other's, over a real gRPC server and the `spiffe`
package's client stubs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from agent.endpoints.workload_api import WorkloadApiService, add_to_server
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache
from agent.state.identity import IdentityState, single
from agent.state.jwt_cache import AudienceKey, JwtSvidCache
from agent.upstream.identity_client import MintedJwt
from certs.spiffe_id import SpiffeId

if TYPE_CHECKING:
    from agent.state.identity import StateLookup

WORKLOAD = ("workload.spiffe.io", "true")


def identity(account: str) -> IdentityState:
    """A state whose JWT-SVIDs are minted here, named after the account, without a CA."""
    spiffe_id = SpiffeId.parse(f"spiffe://cluster.local/ns/demo/sa/{account}")

    async def mint(audiences: AudienceKey) -> MintedJwt:
        now = time.time()
        token = f"jwt-of-{account}-for-{','.join(audiences)}"
        return MintedJwt(
            spiffe_id=str(spiffe_id), token=token, expires_at=now + 300, received_at=now
        )

    return IdentityState(spiffe_id=spiffe_id, cache=SecretCache(), jwt_svids=JwtSvidCache(mint))


def by_header(states: dict[str, IdentityState]) -> StateLookup:
    def lookup(context: grpc.aio.ServicerContext[Any, Any]) -> IdentityState:
        return states[dict(context.invocation_metadata() or ())["x-account"]]

    return lookup


async def serve(states: StateLookup) -> AsyncIterator[workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    server = grpc.aio.server()
    add_to_server(WorkloadApiService(states=states, metrics=AgentMetrics()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    finally:
        await server.stop(None)


async def fetch_jwt(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, account: str | None, spiffe_id: str = ""
) -> Any:
    metadata = [WORKLOAD] + ([("x-account", account)] if account else [])
    request = workload_pb2.JWTSVIDRequest(audience=["db"], spiffe_id=spiffe_id)
    return await api.FetchJWTSVID(request, metadata=metadata)


async def test_each_call_is_answered_from_the_state_its_lookup_gives() -> None:
    frontend, backend = identity("frontend"), identity("backend")
    async for api in serve(by_header({"frontend": frontend, "backend": backend})):
        for account, state in (("frontend", frontend), ("backend", backend)):
            (svid,) = (await fetch_jwt(api, account)).svids
            assert (svid.spiffe_id, svid.svid) == (str(state.spiffe_id), f"jwt-of-{account}-for-db")
        own = await fetch_jwt(api, "backend", spiffe_id=str(backend.spiffe_id))
        assert own.svids[0].svid == "jwt-of-backend-for-db"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fetch_jwt(api, "frontend", spiffe_id=str(backend.spiffe_id))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"its identity is {frontend.spiffe_id}" in str(refused.value.details())


async def test_the_per_pod_agent_answers_every_call_from_its_one_identity() -> None:
    only = identity("frontend")
    async for api in serve(single(only)):
        (svid,) = (await fetch_jwt(api, None)).svids
        assert svid.spiffe_id == str(only.spiffe_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fetch_jwt(api, "backend", spiffe_id="spiffe://cluster.local/ns/demo/sa/backend")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
