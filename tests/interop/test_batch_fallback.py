"""The node agent's batch client against Istio's own CA and against Bulwark (issue 23).

Istio's CA (`bench/istio-ca`, built by bench/build-istio-ca.sh: istiod's CA server and JWT
authenticator, no Kubernetes) has no BatchCreateCertificates: it answers UNIMPLEMENTED and
`BatchIssuer` falls back to one CreateCertificate per identity, with
`ImpersonatedIdentity` for the identities that are not the caller's. Without a node
authorizer istiod refuses every impersonation (UNAUTHENTICATED), so the caller's own
certificate is issued and each workload's is refused, each in its own outcome. Bulwark,
given the same orders and a --node-identity-policy, answers them in batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from agent.upstream.batch_client import BatchIssuer, CertificateOutcome
from bench.istio_ca import IstioCa, istio_ca_binary, start_istio_ca
from ca_server.authn.local_issuer import LocalIssuer
from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from tests.support.batch_orders import bad_csr_order, bearer, order, tls_channel, workload
from tests.support.ca_process import RunningCa, start_ca
from tests.support.interop import openssl_verify

NODE = workload("bulwark-system", "node-agent")
WORKLOADS = [workload("demo", f"w{i}") for i in range(3)]


@pytest.fixture(scope="module")
def istio_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IstioCa]:
    work = tmp_path_factory.mktemp("istio-ca")
    ca = start_istio_ca(istio_ca_binary(), work, work / "issuer")
    try:
        yield ca
    finally:
        ca.stop()


@pytest.fixture(scope="module")
def bulwark_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    base = tmp_path_factory.mktemp("bulwark-batch")
    policy = base / "policy.yaml"
    policy.write_text('{"bulwark-system/node-agent": ["demo/*"]}\n')
    ca = start_ca(base / "ca", "--node-identity-policy", str(policy))
    try:
        yield ca
    finally:
        ca.stop()


def node_token(issuer_dir: Path) -> str:
    return LocalIssuer.load_or_create(issuer_dir).mint(
        namespace="bulwark-system", service_account="node-agent"
    )


async def issue(issuer: BatchIssuer, addr: str, root: Path, token: str) -> list[CertificateOutcome]:
    orders = [
        order("", csr_for=NODE),
        *[order(w) for w in WORKLOADS],
        bad_csr_order(NODE),
        order(NODE),
    ]
    async with tls_channel(addr, root) as channel:
        return await issuer.issue(channel, orders, bearer(token))


def named(outcome: CertificateOutcome) -> str:
    return str(spiffe_id_of(load_certificates(outcome.chain[0])[0]))


async def test_istios_ca_gets_one_create_certificate_per_identity(
    istio_ca: IstioCa, tmp_path: Path
) -> None:
    issuer = BatchIssuer(timeout=timedelta(seconds=20), own_identity=NODE, max_batch=4)
    issuer_dir = istio_ca.root.parent.parent / "issuer"
    outcomes = await issue(issuer, istio_ca.addr, istio_ca.root, node_token(issuer_dir))
    assert not issuer.batch_supported, "Istio's CA answered UNIMPLEMENTED to the batch call"
    codes = [o.code for o in outcomes]
    assert codes == [
        grpc.StatusCode.OK,
        *[grpc.StatusCode.UNAUTHENTICATED] * 3,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OK,
    ], [(o.code, o.message) for o in outcomes]
    assert [o.spiffe_id for o in outcomes[1:4]] == WORKLOADS
    assert all("impersonation" in o.message for o in outcomes[1:4])
    for i in (0, 5):
        assert named(outcomes[i]) == NODE
        openssl_verify("".join(outcomes[i].chain), istio_ca.root, tmp_path / f"v{i}")


async def test_bulwark_answers_the_same_orders_in_batches(
    bulwark_ca: RunningCa, tmp_path: Path
) -> None:
    issuer = BatchIssuer(timeout=timedelta(seconds=20), own_identity=NODE, max_batch=4)
    outcomes = await issue(
        issuer,
        bulwark_ca.grpc_addr,
        bulwark_ca.root_cert_path,
        node_token(bulwark_ca.data_dir),
    )
    assert issuer.batch_supported
    assert [o.code for o in outcomes] == [
        *[grpc.StatusCode.OK] * 4,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OK,
    ]
    assert [named(o) for o in outcomes if o.ok] == [NODE, *WORKLOADS, NODE]
    for i in range(1, 4):
        openssl_verify("".join(outcomes[i].chain), bulwark_ca.root_cert_path, tmp_path / f"v{i}")
