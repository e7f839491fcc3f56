"""The CA client: headers, token re-reads, Istio's retry policy, PROV_CERT mTLS.

Header and retry checks use a recording TLS peer on loopback (it stands in for
a CA that misbehaves on purpose); token and mTLS checks use the real CA.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.config import AgentConfig
from agent.errors import CaRequestFailed
from agent.metrics import AgentMetrics
from agent.runtime import Agent
from agent.upstream.caclient import CaClient, RetryPolicy
from certs.csr import build_csr
from certs.keys import KeyType, generate_key, private_key_pem
from certs.pem import to_pem
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.support.agent import ISTIOD_SAN, agent_config
from tests.support.ca_process import RunningCa

SID = SpiffeId.for_service_account(TrustDomain("cluster.local"), "demo", "frontend")


@dataclass
class Recorder(ca_pb2_grpc.IstioCertificateServiceServicer):
    """Answers with the queued status codes, then with a fixed chain; records every call."""

    failures: list[grpc.StatusCode] = field(default_factory=list)
    calls: list[dict[str, str]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    async def CreateCertificate(self, request: Any, context: Any) -> Any:
        self.calls.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        if self.failures:
            await context.abort(self.failures.pop(0), "failing on purpose (test)")
        return ca_pb2.IstioCertificateResponse(cert_chain=["leaf", "root"])


@dataclass
class Peer:
    addr: str
    root_path: Path
    recorder: Recorder


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    now = datetime.now(UTC)
    root_key = generate_key(KeyType.EC_P256)
    root = self_signed_root(key=root_key, trust_domain=TrustDomain("cluster.local"), now=now)
    key = generate_key(KeyType.EC_P256)
    cert = leaf_certificate(
        spiffe_id=None,
        public_key=key.public_key(),
        issuer_cert=root,
        issuer_key=root_key,
        now=now,
        ttl=timedelta(hours=1),
        dns_names=(ISTIOD_SAN,),
    )
    root_path = tmp_path / "peer-root.pem"
    root_path.write_text(to_pem(root))
    recorder = Recorder()
    server = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(recorder, server)
    creds = grpc.ssl_server_credentials([(private_key_pem(key), to_pem(cert).encode())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield Peer(f"127.0.0.1:{port}", root_path, recorder)
    finally:
        await server.stop(None)


def client_for(config: AgentConfig) -> tuple[CaClient, AgentMetrics]:
    metrics = AgentMetrics()
    fast = RetryPolicy(base=timedelta(milliseconds=10))
    client = CaClient(
        config, metrics=metrics, now=lambda: datetime.now(UTC), rng=random.Random(1), retry=fast
    )
    return client, metrics


def csr() -> bytes:
    return build_csr(generate_key(KeyType.EC_P256), SID)


async def test_headers_and_request_fields(peer: Peer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    config = AgentConfig(
        namespace="demo",
        service_account="frontend",
        ca_addr=peer.addr,
        ca_root_ca=peer.root_path,
        istiod_san=ISTIOD_SAN,
        token_path=token,
        cluster_id="east",
        cert_signer="signer-a",
        ca_headers=(("x-tenant", "blue"),),
        secret_ttl=timedelta(minutes=5),
    )
    client, _ = client_for(config)
    assert await client.sign(csr(), config.secret_ttl) == ["leaf", "root"]
    token.write_text("second-token")
    await client.sign(csr(), config.secret_ttl)
    token.unlink()
    await client.sign(csr(), config.secret_ttl)
    first, second, third = peer.recorder.calls
    assert first["authorization"] == "Bearer first-token"
    assert second["authorization"] == "Bearer second-token"  # re-read before every CSR
    assert "authorization" not in third  # left out when the file is missing
    assert first["clusterid"] == "east" and first["x-tenant"] == "blue"
    request = peer.recorder.requests[0]
    assert request.validity_duration == 300
    assert request.metadata["CertSigner"] == "signer-a"
    assert request.csr.startswith("-----BEGIN CERTIFICATE REQUEST-----")


async def test_retryable_codes_are_retried_up_to_five_attempts(peer: Peer, tmp_path: Path) -> None:
    config = AgentConfig(
        ca_addr=peer.addr,
        ca_root_ca=peer.root_path,
        istiod_san=ISTIOD_SAN,
        token_path=tmp_path / "none",
    )
    client, metrics = client_for(config)
    peer.recorder.failures = [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    ]
    assert await client.sign(csr(), timedelta(hours=1)) == ["leaf", "root"]
    assert len(peer.recorder.calls) == 5
    assert metrics.value("num_outgoing_retries", request_type="csr") == 4
    assert metrics.value("num_failed_outgoing_requests", request_type="csr") == 0

    peer.recorder.failures = [grpc.StatusCode.UNAVAILABLE] * 6
    with pytest.raises(CaRequestFailed) as err:
        await client.sign(csr(), timedelta(hours=1))
    assert err.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert len(peer.recorder.calls) == 10  # five more attempts, then give up
    assert metrics.value("num_failed_outgoing_requests", request_type="csr") == 1
    assert metrics.value("num_outgoing_requests", request_type="csr") == 2
    assert metrics.value("outgoing_latency", request_type="csr") > 0


async def test_non_retryable_codes_fail_at_once(peer: Peer, tmp_path: Path) -> None:
    config = AgentConfig(
        ca_addr=peer.addr,
        ca_root_ca=peer.root_path,
        istiod_san=ISTIOD_SAN,
        token_path=tmp_path / "none",
    )
    client, metrics = client_for(config)
    peer.recorder.failures = [grpc.StatusCode.UNAUTHENTICATED]
    with pytest.raises(CaRequestFailed, match="UNAUTHENTICATED"):
        await client.sign(csr(), timedelta(hours=1))
    assert len(peer.recorder.calls) == 1
    assert metrics.value("num_outgoing_retries", request_type="csr") == 0


async def test_wrong_server_name_is_refused(peer: Peer, tmp_path: Path) -> None:
    config = AgentConfig(
        ca_addr=peer.addr,
        ca_root_ca=peer.root_path,
        istiod_san="other.example",
        token_path=tmp_path / "none",
    )
    client, _ = client_for(config)
    with pytest.raises(CaRequestFailed, match="UNAVAILABLE"):
        await client.sign(csr(), timedelta(hours=1))
    assert peer.recorder.calls == []


async def test_missing_root_file_says_where_it_looked(tmp_path: Path) -> None:
    config = AgentConfig(ca_addr="127.0.0.1:1", ca_root_ca=tmp_path / "nope.pem")
    client, metrics = client_for(config)
    with pytest.raises(CaRequestFailed, match=r"nope\.pem"):
        await client.sign(csr(), timedelta(hours=1))
    assert metrics.value("num_failed_outgoing_requests", request_type="csr") == 1


async def test_prov_cert_renews_over_mtls_without_a_token(shared_ca: RunningCa, work: Path) -> None:
    first = await Agent(agent_config(shared_ca, work)).issue()
    prov = work / "prov"
    prov.mkdir()
    (prov / "cert-chain.pem").write_bytes(first.chain_pem)
    (prov / "key.pem").write_bytes(first.key_pem)
    (prov / "root-cert.pem").write_bytes(shared_ca.root_cert_path.read_bytes())
    config = AgentConfig(
        namespace="demo",
        service_account="frontend",
        ca_addr=shared_ca.mtls_addr,
        ca_root_ca=None,
        prov_cert_dir=prov,
        istiod_san=ISTIOD_SAN,
        token_path=work / "no-token",
        ecc_signature_algorithm="ECDSA",
    )
    # the CA's renewal port (client certificate required); root from PROV_CERT, no token
    renewed = await Agent(config).issue()
    assert renewed.spiffe_id == first.spiffe_id and renewed.serial != first.serial

    # CA_ADDR stays on the token port; BULWARK_MTLS_CA_ADDR takes PROV_CERT renewals.
    split = AgentConfig(
        **{**_fields(config), "ca_addr": shared_ca.grpc_addr, "mtls_ca_addr": shared_ca.mtls_addr}
    )
    assert (await Agent(split).issue()).spiffe_id == first.spiffe_id

    no_token = AgentConfig(
        **{
            **_fields(config),
            "prov_cert_dir": None,
            "ca_addr": shared_ca.grpc_addr,
            "ca_root_ca": shared_ca.root_cert_path,
        }
    )
    with pytest.raises(CaRequestFailed, match="UNAUTHENTICATED"):
        await Agent(no_token).issue()


def _fields(config: AgentConfig) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config) if f.init}


async def test_preconnected_channel_carries_only_the_next_csr(
    shared_ca: RunningCa, work: Path
) -> None:
    """#18.4: the start opens the first CSR's channel early (its TLS handshake overlaps the
    gRPC server's start); that channel serves exactly one CSR, later ones open their own."""
    agent = Agent(agent_config(shared_ca, work))
    agent.ca.preconnect()
    warm = agent.ca._warm
    agent.ca.preconnect()  # a second call keeps the channel already opening
    assert agent.ca._warm is warm
    assert warm is not None  # after the `is`, which mypy reads as widening `warm` again
    first = await agent.issue()
    assert agent.ca._warm is None
    assert warm.get_state() == grpc.ChannelConnectivity.SHUTDOWN  # closed after its CSR
    second = await agent.issue()
    assert first.serial != second.serial and first.spiffe_id == second.spiffe_id
    agent.ca.preconnect()
    await agent.ca.close()  # an unused one is closed on shutdown
    assert agent.ca._warm is None


async def test_preconnect_without_a_root_leaves_the_error_to_the_csr(tmp_path: Path) -> None:
    """#18.4: preconnecting never raises; the CSR reports the missing root as before."""
    config = AgentConfig(ca_addr="127.0.0.1:1", ca_root_ca=tmp_path / "nope.pem")
    client, metrics = client_for(config)
    client.preconnect()
    with pytest.raises(CaRequestFailed, match=r"nope\.pem"):
        await client.sign(csr(), timedelta(hours=1))
    assert metrics.value("num_failed_outgoing_requests", request_type="csr") == 1
