"""A federated domain whose keys rotate faster than ours is followed at its own pace.

Defect covered: the agent polled `FetchTrustBundles` at the own bundle's
`spiffe_refresh_hint` only (capped by `BULWARK_TRUST_BUNDLE_REFRESH`, 30 s by default). CA A
here signs with a key for 6 s and publishes the next one 3 s before it signs (hint 1 s); CA B
follows A's hint when fetching, but B's agent, whose own CA says 5 min, kept A's previous keys
for its whole refresh interval, so A's tokens signed with the new key were refused at B for
up to that long. The agent now polls at the shortest hint of any bundle it holds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.agent.support import LiveAgent, agent_config, running_agent
from tests.federation.pair import A, B, FederatedPair, federated_pair, spiffe_id

HEADER = (("workload.spiffe.io", "true"),)
SLOW_REFRESH = timedelta(seconds=20)  # B's agent: far longer than A's key lead time (3 s)


@pytest.fixture(scope="module")
def fast_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatedPair]:
    flags = ("--jwt-key-active-life", "6s")
    with federated_pair(tmp_path_factory.mktemp("fast-a"), a_flags=flags) as cas:
        yield cas


def kids_of(bundles: dict[str, bytes], td: str) -> set[str]:
    return {k["kid"] for k in json.loads(bundles[f"spiffe://{td}"])["keys"]}


async def a_token_with_a_new_kid(api_a: workload_pb2_grpc.SpiffeWorkloadAPIStub, known: set[str]):  # type: ignore[no-untyped-def]
    """Mint at A (a fresh audience each time: no cached token) until a key B's agent did not
    know at the start signs it; the token and its audience."""
    import jwt

    async with asyncio.timeout(20):
        for n in itertools.count():
            audience = spiffe_id(B, f"backend-{n}")
            response = await api_a.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=[audience]), metadata=HEADER
            )
            token = response.svids[0].svid
            if jwt.get_unverified_header(token)["kid"] not in known:
                return token, audience
            await asyncio.sleep(0.3)
    raise AssertionError("unreachable")


async def test_agent_follows_a_faster_federated_refresh_hint(
    fast_a: FederatedPair, work: Path
) -> None:
    def config(td: str, account: str, refresh: timedelta):  # type: ignore[no-untyped-def]
        return agent_config(
            fast_a.ca(td),
            work,
            trust_domain=td,
            service_account=account,
            socket_path=work / f"{account}.sock",
            trust_bundle_refresh=refresh,
        )

    agent_a: LiveAgent
    async with (
        running_agent(config(A, "frontend", timedelta(milliseconds=200))) as agent_a,
        running_agent(config(B, "backend", SLOW_REFRESH)) as agent_b,
        grpc.aio.insecure_channel(agent_a.socket) as ch_a,
        grpc.aio.insecure_channel(agent_b.socket) as ch_b,
    ):
        bundles = agent_b.agent.cache.snapshot.bundles
        assert bundles is not None and bundles.for_trust_domain(A) is not None
        # B's agent waits A's hint (1 s) between polls, not its own CA's or the 20 s cap
        assert await agent_b.agent.bundle_poller.poll() == timedelta(seconds=1)
        known = kids_of(bundles.jwt_bundles(), A)
        token, audience = await a_token_with_a_new_kid(
            workload_pb2_grpc.SpiffeWorkloadAPIStub(ch_a), known
        )
        api_b = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch_b)
        request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token)
        # the new key was published 3 s before it signed: B's agent knows it by now, or
        # within one more hop (CA B's fetch, then the agent's poll, 1 s each)
        async with asyncio.timeout(5):
            while True:
                try:
                    checked = await api_b.ValidateJWTSVID(request, metadata=HEADER)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                    await asyncio.sleep(0.2)
        assert checked.spiffe_id == spiffe_id(A, "frontend")
