"""Changes in a federated domain reach our workloads while everything runs.

CA A (a.test) here rotates its JWT keys every 6 s (refresh hint 1 s) and can prepare a new
root (`--ca-rotation new-key`); CA B and B's agent follow.

1. A federated domain whose keys rotate faster than ours is followed at its own pace.
Defect covered: the agent polled `FetchTrustBundles` at the own bundle's
`spiffe_refresh_hint` only (capped by `BULWARK_TRUST_BUNDLE_REFRESH`, 30 s by default). CA A
here signs with a key for 6 s and publishes the next one 3 s before it signs (hint 1 s); CA B
follows A's hint when fetching, but B's agent, whose own CA says 5 min, kept A's previous keys
for its whole refresh interval, so A's tokens signed with the new key were refused at B for
up to that long. The agent now polls at the shortest hint of any bundle it holds.

2. A new root of A (prepared by the operator) reaches B's workloads without any restart:
pushed in `FetchX509SVID.federated_bundles` and in the SDS `ROOTCA` Envoy would get.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe._proto import workload_pb2, workload_pb2_grpc

from agent.config import AgentConfig
from agent.endpoints.resources import ROOTCA
from tests.support.agent import NODE, LiveAgent, SdsStream, agent_config, running_agent, secrets_of
from tests.support.ca_process import RunningCa
from tests.support.federation import (
    A,
    B,
    FederatedPair,
    admin,
    federated_pair,
    spiffe_id,
    until_federated,
)
from tests.support.rootca import rootca_domains

HEADER = (("workload.spiffe.io", "true"),)
SLOW_REFRESH = timedelta(seconds=20)  # B's agent: far longer than A's key lead time (3 s)


ADMIN_TOKEN = "rotate-secret"


@pytest.fixture(scope="module")
def fast_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatedPair]:
    work = tmp_path_factory.mktemp("fast-a")
    token = work / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    token.chmod(0o600)
    flags = (
        "--jwt-key-active-life", "6s", "--ca-rotation", "new-key",
        "--admin-token-file", str(token), "--material-check-interval", "0.2s",
    )  # fmt: skip
    with federated_pair(work, a_flags=flags) as cas:
        yield cas


def kids_of(bundles: dict[str, bytes], td: str) -> set[str]:
    return {k["kid"] for k in json.loads(bundles[f"spiffe://{td}"])["keys"]}


async def a_token_with_a_new_kid(
    api_a: workload_pb2_grpc.SpiffeWorkloadAPIStub, known: set[str]
) -> tuple[str, str]:
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


@pytest.mark.slow
async def test_agent_follows_a_faster_federated_refresh_hint(
    fast_a: FederatedPair, work: Path
) -> None:
    def config(td: str, account: str, refresh: timedelta) -> AgentConfig:
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
        await until_federated(agent_b, A)
        bundles = agent_b.agent.cache.snapshot.bundles
        assert bundles is not None
        # B's agent waits A's hint (1 s) between polls, not its own CA's or the 20 s cap
        assert await agent_b.agent.bundle_poller.poll() == timedelta(seconds=1)
        known = kids_of(bundles.jwt_bundles(), A)
        token, audience = await a_token_with_a_new_kid(
            workload_pb2_grpc.SpiffeWorkloadAPIStub(ch_a), known
        )
        api_b = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch_b)
        request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token)
        # the new key was published 3 s before it signed: B's agent knows it by now, or
        # within one more hop (CA B's fetch, then the agent's poll, 1 s each); the bound is
        # generous because a loaded CI machine stretches each hop, and speed is not the point
        async with asyncio.timeout(15):
            while True:
                try:
                    checked = await api_b.ValidateJWTSVID(request, metadata=HEADER)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                    await asyncio.sleep(0.2)
        assert checked.spiffe_id == spiffe_id(A, "frontend")


def prepare_new_root(ca: RunningCa) -> None:
    request = urllib.request.Request(
        f"{ca.admin_url}/v1/ca/rotation/prepare",
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def x509_roots_der(ca: RunningCa) -> set[bytes]:
    doc = admin(ca, "/v1/trust-bundle?format=spiffe")
    return {base64.b64decode(k["x5c"][0]) for k in doc["keys"] if k["use"] == "x509-svid"}


def split_der(blob: bytes) -> set[bytes]:
    return {c.public_bytes(Encoding.DER) for c in load_der_certificates(blob)}


def load_der_certificates(blob: bytes) -> list[x509.Certificate]:
    """Concatenated DER certificates (the Workload API's bundle form)."""
    certs = []
    while blob:
        length = _der_length(blob)
        certs.append(x509.load_der_x509_certificate(blob[:length]))
        blob = blob[length:]
    return certs


def _der_length(blob: bytes) -> int:
    first = blob[1]
    if first < 0x80:
        return 2 + first
    size = first & 0x7F
    return 2 + size + int.from_bytes(blob[2 : 2 + size], "big")


async def test_a_new_foreign_root_reaches_workloads_and_sds_without_restart(
    fast_a: FederatedPair, work: Path
) -> None:
    config = agent_config(
        fast_a.b,
        work,
        trust_domain=B,
        service_account="backend",
        trust_bundle_refresh=timedelta(milliseconds=200),
    )
    old = x509_roots_der(fast_a.a)
    own = x509_roots_der(fast_a.b)
    async with (
        running_agent(config) as agent_b,
        grpc.aio.insecure_channel(agent_b.socket) as channel,
    ):
        await until_federated(agent_b, A)
        svids = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER
        )
        first = await asyncio.wait_for(svids.read(), 10)
        assert split_der(first.federated_bundles[f"spiffe://{A}"]) == old
        sds = SdsStream(channel)
        await sds.send(node=NODE, resource_names=[ROOTCA])
        before = secrets_of(await sds.next())[ROOTCA]
        assert rootca_domains(before) == {B: own, A: old}

        prepare_new_root(fast_a.a)
        grown = x509_roots_der(fast_a.a)
        assert len(grown) == 2 and old < grown
        pushed = secrets_of(await sds.next(20))[ROOTCA]
        assert rootca_domains(pushed) == {B: own, A: grown}
        second = await asyncio.wait_for(svids.read(), 20)
        assert split_der(second.federated_bundles[f"spiffe://{A}"]) == grown
        assert second.svids[0].bundle == first.svids[0].bundle  # B's own roots unchanged
        sds.cancel()
        svids.cancel()
