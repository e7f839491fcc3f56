"""The node agent's upstream batch client against a real Bulwark CA process.

`BatchIssuer` sends BatchCreateCertificates in chunks of `max_batch`; with `use_batch=False`
it takes the path it takes against a stock Istio CA (one CreateCertificate per identity with
`ImpersonatedIdentity`), which Bulwark serves too. Both must give the same outcomes. The
fallback against Istio's own CA is tests/interop/test_batch_fallback.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest

from agent.upstream.batch_client import BatchIssuer
from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from tests.support.batch_orders import bad_csr_order, bearer, order, tls_channel, workload
from tests.support.ca_process import RunningCa, start_ca
from tests.support.metrics import metric

NODE = workload("bulwark-system", "node-agent")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    base = tmp_path_factory.mktemp("batch-client")
    policy = base / "policy.yaml"
    policy.write_text('{"bulwark-system/node-agent": ["demo/*"]}\n')
    running = start_ca(base / "ca", "--node-identity-policy", str(policy))
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("use_batch", [True, False], ids=["batch", "one-by-one"])
async def test_each_order_gets_its_own_outcome_in_order(ca: RunningCa, use_batch: bool) -> None:
    issuer = BatchIssuer(
        timeout=timedelta(seconds=20), own_identity=NODE, max_batch=3, use_batch=use_batch
    )
    orders = [
        order("", csr_for=NODE),
        *[order(workload("demo", f"w{i}")) for i in range(4)],
        order(workload("shop", "checkout")),
        bad_csr_order(workload("demo", "w9")),
    ]
    batches_before = metric(ca, "bulwark_ca_batch_size_count")
    async with tls_channel(ca.grpc_addr, ca.root_cert_path) as channel:
        outcomes = await issuer.issue(
            channel, orders, bearer(ca.mint_token("bulwark-system", "node-agent"))
        )
    assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * 5 + [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    named = [str(spiffe_id_of(load_certificates(o.chain[0])[0])) for o in outcomes[:5]]
    assert named == [NODE, *[workload("demo", f"w{i}") for i in range(4)]]
    assert all(o.chain[-1] == ca.root_cert_path.read_text() for o in outcomes[:5])
    assert "allows it only demo/*" in outcomes[5].message
    assert outcomes[6].spiffe_id == workload("demo", "w9") and not outcomes[6].chain
    batches = metric(ca, "bulwark_ca_batch_size_count") - batches_before
    assert batches == (3 if use_batch else 0), "7 orders in chunks of 3, or no batch call"
    assert issuer.batch_supported


async def test_a_refused_call_refuses_every_order_of_its_chunk(ca: RunningCa) -> None:
    issuer = BatchIssuer(timeout=timedelta(seconds=20))
    async with tls_channel(ca.grpc_addr, ca.root_cert_path) as channel:
        outcomes = await issuer.issue(
            channel, [order(""), order(workload("demo", "w1"))], bearer("garbage.token.value")
        )
    assert [o.code for o in outcomes] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert all("not a JWT" in o.message for o in outcomes)
