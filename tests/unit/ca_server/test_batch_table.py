"""BatchCreateCertificates' policy, row by row, in-process against the small test CA.

Every item-level refusal of CreateCertificate's table (CSR, TTL, impersonation) is sent as
one item of a batch beside a good item: the bad item must carry exactly the code and
message CreateCertificate would answer, be counted and logged, and the good item must be
issued and recorded anyway. Whole-call refusals (credentials, size, garbage) refuse the
call; nothing is issued. The record must hold exactly the issued items, committed in one
`record_many` per call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

import grpc
import pytest

from ca_server.issuance.service import UndecodableRequest
from ca_server.node_policy import parse_node_policy
from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from protos.bulwark.v1 import identity_pb2
from tests.support import broken
from tests.support.broken import csr_pem
from tests.support.policy_cases import CSR_CASES, IMPERSONATION_CASES, ME, TOKEN_CASES, TTL_CASES
from tests.support.policy_cases import Case as PolicyCase
from tests.support.testca import Aborted, Item, TestCa

BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ZTUNNEL = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
OK = grpc.StatusCode.OK.value[0]
POLICY = parse_node_policy('{"istio-system/ztunnel": ["demo/*"]}')
ITEM_CASES = [c for c in TOKEN_CASES if c.name.startswith("impersonation")] + [
    *IMPERSONATION_CASES,
    *CSR_CASES,
    *TTL_CASES,
]
CALL_CASES = [c for c in TOKEN_CASES if not c.name.startswith("impersonation")]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(
        tmp_path_factory.mktemp("batchca"),
        trusted_node_accounts=("istio-system/ztunnel",),
        node_identity_policy=POLICY,
        batch_max_certificates=8,
    )


@pytest.fixture
def ca(base: TestCa) -> TestCa:
    """The module's material and issuer with a new record, metrics and servicers."""
    return TestCa.with_material(base.config, base.material, base.issuer)


def identity_of(result: identity_pb2.CertificateResult) -> str:
    return str(spiffe_id_of(load_certificates(result.cert_chain[0])[0]))


def good(spiffe_id: str = "") -> Item:
    """An item whose CSR names no SAN (the CA fills in the identity)."""
    return Item(csr_pem(broken.good_key()), spiffe_id=spiffe_id)


def code_of(result: identity_pb2.CertificateResult) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == result.status.code)


def refused_call(ca: TestCa, items: object, **kwargs: object) -> Aborted:
    with pytest.raises(Aborted) as err:
        ca.issue_batch(items, **kwargs)  # type: ignore[arg-type]
    return err.value


@pytest.mark.parametrize("case", ITEM_CASES, ids=[c.name for c in ITEM_CASES])
def test_a_bad_item_is_refused_alone_as_create_certificate_would(
    ca: TestCa, case: PolicyCase, caplog: pytest.LogCaptureFixture
) -> None:
    csr, token, ttl, md = case.build(ca.forge)
    assert token is not None
    bad = Item(csr, spiffe_id=md.get("ImpersonatedIdentity", ""), ttl_s=ttl)
    with caplog.at_level(logging.INFO, logger="ca_server.events"):
        first, second, third = ca.issue_batch([good(), bad, good()], token=token)
    assert code_of(second) == case.code, second.status.message
    assert case.says in second.status.message
    assert not second.cert_chain
    assert first.status.code == OK and third.status.code == OK
    assert len(ca.recorder.entries) == 2 and ca.recorder.batches == [2]
    sent = {load_certificates(r.cert_chain[0])[0].serial_number for r in (first, third)}
    assert sent == {int(e.serial, 16) for e in ca.recorder.entries}
    assert ca.metric("citadel_server_csr_count") == 3
    assert ca.metric("citadel_server_success_cert_issuance_count") == 2
    assert ca.metric("bulwark_ca_refusals_total", reason=case.reason, code=case.code.name) == 1
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ref")]
    assert len(refusals) == 1 and f"code={case.code.name}" in refusals[0]
    assert token not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("case", CALL_CASES, ids=[c.name for c in CALL_CASES])
def test_bad_credentials_refuse_the_whole_call(ca: TestCa, case: PolicyCase) -> None:
    _, token, _, _ = case.build(ca.forge)
    err = refused_call(ca, [good(), good()], token=token)
    assert err.code == case.code and case.says in err.details
    if token:
        assert token not in err.details
    assert ca.recorder.entries == []
    assert ca.metric("citadel_server_authentication_failure_count") == 1
    assert ca.metric("bulwark_ca_refusals_total", reason=case.reason, code=case.code.name) == 1


def test_a_mixed_node_batch_answers_each_item_in_order(ca: TestCa) -> None:
    """A node agent's batch: itself, two workloads the policy allows, one it does not,
    one not a SPIFFE ID, one of another trust domain, one bad CSR."""
    items = [
        good(),
        good(BACKEND),
        good("spiffe://cluster.local/ns/demo/sa/frontend"),
        good(CHECKOUT),
        good("backend"),
        good("spiffe://example.org/ns/demo/sa/backend"),
        Item("not a CSR", spiffe_id=BACKEND),
        good(ZTUNNEL),
    ]
    results = ca.issue_batch(items, token=ca.mint("istio-system", "ztunnel"))
    assert [code_of(r).name for r in results] == [
        "OK",
        "OK",
        "OK",
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
        "INVALID_ARGUMENT",
        "OK",
    ]
    assert [identity_of(r) for r in results if r.status.code == OK] == [
        ZTUNNEL,
        BACKEND,
        "spiffe://cluster.local/ns/demo/sa/frontend",
        ZTUNNEL,
    ]
    assert [r.spiffe_id for r in results if r.status.code == OK] == [
        ZTUNNEL,
        BACKEND,
        "spiffe://cluster.local/ns/demo/sa/frontend",
        ZTUNNEL,
    ]
    assert "allows it only demo/*" in results[3].status.message
    assert "is not a SPIFFE ID" in results[4].status.message
    assert "not a workload of this trust domain" in results[5].status.message
    assert ca.recorder.batches == [4]
    by_id = [(e.spiffe_id, e.subject) for e in ca.recorder.entries]
    assert by_id[1] == (BACKEND, f"system:serviceaccount:istio-system:ztunnel as {BACKEND}")
    for result in results:
        if result.status.code == OK:
            assert len(result.cert_chain) == 2 and result.cert_chain[1] == ca.root_pem


def test_the_chain_has_create_certificates_shape(ca: TestCa) -> None:
    token = ca.mint()
    [result] = ca.issue_batch([Item(csr_pem(broken.good_key(), uris=(ME,)))], token=token)
    single = ca.issue(csr_pem(broken.good_key(), uris=(ME,)), token=token)
    assert len(result.cert_chain) == len(single) and result.cert_chain[1:] == single[1:]
    leaf = load_certificates(result.cert_chain[0])[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(seconds=3600 + 120)


def test_duplicate_identities_are_each_issued(ca: TestCa) -> None:
    results = ca.issue_batch([good(BACKEND)] * 3, token=ca.mint("istio-system", "ztunnel"))
    assert all(r.status.code == OK for r in results)
    serials = {e.serial for e in ca.recorder.entries}
    assert len(serials) == 3 and ca.recorder.batches == [3]


def test_a_workload_may_ask_only_for_itself(ca: TestCa) -> None:
    """No impersonation right: its own identity (empty or spelled out) only."""
    results = ca.issue_batch([good(), good(ME), good(BACKEND)], token=ca.mint())
    assert [code_of(r).name for r in results] == ["OK", "OK", "UNAUTHENTICATED"]
    assert "CA_TRUSTED_NODE_ACCOUNTS" in results[2].status.message


def test_a_client_certificate_authenticates_the_batch(ca: TestCa) -> None:
    results = ca.issue_batch([good(), good(ME)], client_chain_pem=ca.client_chain(ME))
    assert all(r.status.code == OK for r in results)
    assert {e.authenticator for e in ca.recorder.entries} == {"client-cert"}


def test_the_clusterid_header_is_recorded_as_for_create_certificate(ca: TestCa) -> None:
    ca.issue_batch([good(), good()], token=ca.mint(), headers=[("clusterid", "east")])
    assert [e.cluster_id for e in ca.recorder.entries] == ["east", "east"]
    # a cluster this CA does not know labels its series `unknown`, as for CreateCertificate
    assert ca.metric("bulwark_ca_issued_total", cluster="unknown") == 2


@pytest.mark.parametrize("size", [0, 9, 500])
def test_a_batch_outside_one_to_the_limit_is_refused(ca: TestCa, size: int) -> None:
    item = good()
    err = refused_call(ca, [item] * size, token=ca.mint())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"1 to 8 certificate requests; this one has {size}" in err.details
    assert ca.recorder.entries == [] and ca.recorder.batches == []
    assert (
        ca.metric("bulwark_ca_refusals_total", reason="bad_request", code="INVALID_ARGUMENT") == 1
    )


def test_garbage_is_invalid_argument(ca: TestCa) -> None:
    err = refused_call(
        ca, UndecodableRequest("request is not a valid BatchCreateCertificatesRequest")
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ca.recorder.entries == []


def test_a_record_failure_fails_exactly_the_items_not_committed(ca: TestCa) -> None:
    ca.recorder.refuse = lambda entry: entry.spiffe_id == BACKEND
    results = ca.issue_batch(
        [good(), good(BACKEND), good("spiffe://cluster.local/ns/demo/sa/db")],
        token=ca.mint("istio-system", "ztunnel"),
    )
    assert [code_of(r).name for r in results] == ["OK", "INTERNAL", "OK"]
    assert not results[1].cert_chain and "issuance record" in results[1].status.message
    assert [e.spiffe_id for e in ca.recorder.entries] == [
        ZTUNNEL,
        "spiffe://cluster.local/ns/demo/sa/db",
    ]
    assert ca.metric("citadel_server_success_cert_issuance_count") == 2
    assert ca.metric("bulwark_ca_refusals_total", reason="record_failure", code="INTERNAL") == 1


def test_a_dead_record_sends_no_certificate(ca: TestCa) -> None:
    ca.recorder.failing = True
    results = ca.issue_batch([good(), good()], token=ca.mint())
    assert [code_of(r).name for r in results] == ["INTERNAL", "INTERNAL"]
    assert all(not r.cert_chain for r in results)


def test_a_batch_counts_each_item_against_the_in_flight_limit(base: TestCa) -> None:
    limited = TestCa.with_material(
        replace(base.config, max_concurrent_rpcs=3), base.material, base.issuer
    )

    async def run() -> Aborted:
        limited.recorder.gate = asyncio.Event()
        token = limited.mint()
        first = asyncio.create_task(limited.batch_call([good(), good()], token=token))
        await asyncio.sleep(0.01)  # two certificates now wait on the record
        with pytest.raises(Aborted) as err:
            await limited.batch_call([good(), good()], token=token)
        limited.recorder.gate.set()
        assert all(r.status.code == OK for r in await first)
        return err.value

    assert asyncio.run(run()).code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_size_is_observed(ca: TestCa) -> None:
    ca.issue_batch([good()] * 5, token=ca.mint())
    assert ca.registry.get_sample_value("bulwark_ca_batch_size_sum") == 5
    assert ca.registry.get_sample_value("bulwark_ca_batch_size_count") == 1
