"""Federation through the Workload API and SDS: one agent per real CA (a.test, b.test).

Agent A (spiffe://a.test/ns/demo/sa/frontend) and agent B (spiffe://b.test/ns/demo/sa/backend)
run in-process against their own CA; each CA fetched the other's bundle from its https_spiffe
bundle endpoint (tests/support/federation.py). Clients: raw gRPC and py-spiffe.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtSource, TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from agent.config import AgentConfig
from agent.endpoints.resources import ROOTCA
from certs.pem import load_certificates
from tests.support.agent import NODE, LiveAgent, SdsStream, agent_config, running_agent, secrets_of
from tests.support.federation import (
    A,
    B,
    FederatedPair,
    admin,
    jwt_kids,
    spiffe_id,
    until_federated,
)
from tests.support.rootca import rootca_domains

HEADER = (("workload.spiffe.io", "true"),)
FRONTEND, BACKEND = spiffe_id(A, "frontend"), spiffe_id(B, "backend")


@dataclass
class Agents:
    a: LiveAgent
    b: LiveAgent


def root_der(pair: FederatedPair, td: str) -> bytes:
    cert = load_certificates(pair.ca(td).root_cert_path.read_bytes())[0]
    return cert.public_bytes(Encoding.DER)


@pytest.fixture
async def agents(pair: FederatedPair, work: Path) -> AsyncIterator[Agents]:
    refresh = timedelta(milliseconds=200)

    def config(td: str, account: str) -> AgentConfig:
        return agent_config(
            pair.ca(td),
            work,
            trust_domain=td,
            service_account=account,
            socket_path=work / f"{account}.sock",
            trust_bundle_refresh=refresh,
        )

    async with (
        running_agent(config(A, "frontend")) as a,
        running_agent(config(B, "backend")) as b,
    ):
        await until_federated(a, B)
        await until_federated(b, A)
        yield Agents(a, b)


def api_of(channel: grpc.aio.Channel) -> workload_pb2_grpc.SpiffeWorkloadAPIStub:
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


async def test_jwt_svid_minted_for_a_validates_at_b_for_its_audience_only(
    agents: Agents, pair: FederatedPair
) -> None:
    async with (
        grpc.aio.insecure_channel(agents.a.socket) as ch_a,
        grpc.aio.insecure_channel(agents.b.socket) as ch_b,
    ):
        minted = await api_of(ch_a).FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=[BACKEND]), metadata=HEADER
        )
        token = minted.svids[0].svid
        assert minted.svids[0].spiffe_id == FRONTEND

        def validate(audience: str) -> grpc.aio.UnaryUnaryCall:
            request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token)
            return api_of(ch_b).ValidateJWTSVID(request, metadata=HEADER)

        ok = await validate(BACKEND)
        assert ok.spiffe_id == FRONTEND and list(ok.claims["aud"]) == [BACKEND]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await validate("spiffe://b.test/ns/demo/sa/payments")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "aud does not include" in (err.value.details() or "")
        # B's JWT bundles: its own keys and a.test's, as CA B fetched them from CA A
        stream = api_of(ch_b).FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
        message = await asyncio.wait_for(stream.read(), 10)
        stream.cancel()
    jwks = {td: jwt_kids(json.loads(doc)) for td, doc in message.bundles.items()}
    assert set(jwks) == {f"spiffe://{A}", f"spiffe://{B}"}
    assert jwks[f"spiffe://{A}"] == jwt_kids(admin(pair.a, "/v1/trust-bundle?format=spiffe"))


async def test_federated_roots_in_x509_svid_bundles_and_sds_rootca(
    agents: Agents, pair: FederatedPair
) -> None:
    own, foreign = root_der(pair, A), root_der(pair, B)
    async with grpc.aio.insecure_channel(agents.a.socket) as channel:
        api = api_of(channel)
        svids = api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        first = await asyncio.wait_for(svids.read(), 10)
        svids.cancel()
        assert first.svids[0].spiffe_id == FRONTEND
        assert first.svids[0].bundle == own  # the own bundle: own roots only
        assert dict(first.federated_bundles) == {f"spiffe://{B}": foreign}
        bundles = api.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
        both = (await asyncio.wait_for(bundles.read(), 10)).bundles
        bundles.cancel()
        assert dict(both) == {f"spiffe://{A}": own, f"spiffe://{B}": foreign}
        sds = SdsStream(channel)
        await sds.send(node=NODE, resource_names=[ROOTCA])
        pushed = secrets_of(await sds.next())[ROOTCA]
        sds.cancel()
    # Envoy's SPIFFE validator: each trust domain's roots bound to that domain alone
    assert rootca_domains(pushed) == {A: {own}, B: {foreign}}


async def test_py_spiffe_sources_on_a_real_ca_agent(agents: Agents, pair: FederatedPair) -> None:
    """py-spiffe's X509Source and JwtSource at A, validation of A's token at B."""
    endpoint_a = f"unix://{os.path.abspath(agents.a.agent.config.socket_path)}"
    endpoint_b = f"unix://{os.path.abspath(agents.b.agent.config.socket_path)}"

    def use_sources() -> dict[str, object]:
        x509 = X509Source(socket_path=endpoint_a, timeout_in_seconds=15)
        jwts = JwtSource(socket_path=endpoint_a, timeout_in_seconds=15)
        client = WorkloadApiClient(socket_path=endpoint_b)
        try:
            svid = x509.get_x509_context().default_svid
            foreign = x509.get_bundle_for_trust_domain(TrustDomain(B))
            token = jwts.fetch_svid(audience={BACKEND})
            foreign_jwt = jwts.get_bundle_for_trust_domain(TrustDomain(B))
            checked = client.validate_jwt_svid(token.token, BACKEND)
            return {
                "x509": str(svid.spiffe_id),
                "foreign_roots": [c.public_bytes(Encoding.DER) for c in foreign.x509_authorities]
                if foreign
                else [],
                "jwt": str(token.spiffe_id),
                "foreign_kids": set(foreign_jwt.jwt_authorities) if foreign_jwt else set(),
                "validated_at_b": str(checked.spiffe_id),
            }
        finally:
            client.close()
            jwts.close()
            x509.close()

    got = await asyncio.to_thread(use_sources)
    assert got["x509"] == got["jwt"] == got["validated_at_b"] == FRONTEND
    assert got["foreign_roots"] == [root_der(pair, B)]
    assert got["foreign_kids"] == jwt_kids(admin(pair.b, "/v1/trust-bundle?format=spiffe"))
