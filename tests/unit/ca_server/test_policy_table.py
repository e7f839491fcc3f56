"""The CA's policy, row by row, in-process: the worker's servicer against an in-memory CA.

Every refusal must carry its exact gRPC code and a message saying what was wrong, issue
nothing (no record entry, no success count), never echo the token, be counted in
`bulwark_ca_refusals_total{reason,code}` and leave one INFO line. Runs in milliseconds
per row; the process-level checks stay in test_bad_inputs.py.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from ca_server.authority.material import create_self_signed
from ca_server.issuance.service import UndecodableRequest
from ca_server.node_policy import parse_node_policy
from certs.pem import load_certificates
from certs.spiffe_id import TrustDomain
from certs.verify import spiffe_id_of
from tests.support import broken
from tests.support.broken import csr_pem
from tests.support.policy_cases import CASES, ME, Case
from tests.support.testca import Aborted, TestCa

BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"


# Outside Kubernetes a node account impersonates only what --node-identity-policy lists.
ZTUNNEL_POLICY = parse_node_policy('{"istio-system/ztunnel": ["demo/*"]}')


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(
        tmp_path_factory.mktemp("testca"),
        trusted_node_accounts=("istio-system/ztunnel",),
        node_identity_policy=ZTUNNEL_POLICY,
    )


@pytest.fixture
def fresh(ca: TestCa) -> TestCa:
    """The module's CA material and issuer with a new record, metrics and service."""
    return TestCa.with_material(ca.config, ca.material, ca.issuer)


def refuse(ca: TestCa, csr: bytes | str | UndecodableRequest, **kwargs: object) -> Aborted:
    with pytest.raises(Aborted) as err:
        ca.issue(csr, **kwargs)  # type: ignore[arg-type]
    return err.value


def identity_of(chain: list[str]) -> str:
    return str(spiffe_id_of(load_certificates(chain[0])[0]))


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_counted_logged_and_issues_nothing(
    fresh: TestCa, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """Covers #14.7: PERMISSION_DENIED (and every other refusal) is counted in a series."""
    csr, token, ttl, md = case.build(fresh.forge)
    with caplog.at_level(logging.INFO, logger="ca_server.events"):
        err = refuse(fresh, csr, token=token, ttl_s=ttl, metadata_fields=md)
    assert err.code == case.code, err.details
    assert case.says in err.details, err.details
    if token:
        assert token not in err.details, "the token must never be echoed back"
        assert token not in caplog.text, "the token must never be logged"
    assert fresh.recorder.entries == []
    assert fresh.metric("citadel_server_success_cert_issuance_count") == 0
    assert fresh.metric("citadel_server_csr_count") == 1
    assert fresh.metric("bulwark_ca_refusals_total", reason=case.reason, code=case.code.name) == 1
    lines = [r for r in caplog.records if r.name == "ca_server.events"]
    assert len(lines) == 1, caplog.text
    message = lines[0].getMessage()
    assert message.startswith("request refused") and f"code={case.code.name}" in message
    assert "\n" not in message and "Traceback" not in caplog.text


def test_a_good_request_is_issued_recorded_and_logged(
    fresh: TestCa, caplog: pytest.LogCaptureFixture
) -> None:
    """Covers #14.6: issuance is one INFO line (SPIFFE ID, serial, not-after, authenticator,
    caller address) and never the token; before, it was logged at DEBUG only."""
    token = fresh.mint()
    with caplog.at_level(logging.INFO, logger="ca_server.events"):
        chain = fresh.issue(
            csr_pem(broken.good_key(), uris=(ME,)), token=token, peer="ipv4:10.0.0.7:5"
        )
    assert identity_of(chain) == ME and len(chain) == 2
    [entry] = fresh.recorder.entries
    assert fresh.metric("citadel_server_success_cert_issuance_count") == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "ca_server.events"]
    assert line.startswith("certificate issued")
    for part in (ME, entry.serial, entry.not_after.isoformat(), "authenticator=jwt", "10.0.0.7"):
        assert part in line, line
    assert token not in caplog.text


def test_empty_csr_sans_are_filled_and_ttl_zero_gets_the_default(fresh: TestCa) -> None:
    chain = fresh.issue(csr_pem(broken.good_key()), token=fresh.mint(), ttl_s=0)
    leaf = load_certificates(chain[0])[0]
    assert identity_of(chain) == ME
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == fresh.config.default_ttl + timedelta(minutes=2)


@pytest.mark.parametrize("ttl_s", [-1, 1, 90 * 86400])
def test_ttl_within_range_is_issued(fresh: TestCa, ttl_s: int) -> None:
    chain = fresh.issue(csr_pem(broken.good_key(), uris=(ME,)), token=fresh.mint(), ttl_s=ttl_s)
    assert identity_of(chain) == ME


def test_a_node_account_may_impersonate_what_the_policy_lists(fresh: TestCa) -> None:
    chain = fresh.issue(
        csr_pem(broken.good_key(), uris=(BACKEND,)),
        token=fresh.mint("istio-system", "ztunnel"),
        metadata_fields={"ImpersonatedIdentity": BACKEND},
    )
    assert identity_of(chain) == BACKEND
    assert fresh.recorder.entries[0].subject.endswith(f"as {BACKEND}")


def test_a_node_account_may_not_impersonate_beyond_the_policy(fresh: TestCa) -> None:
    target = "spiffe://cluster.local/ns/shop/sa/checkout"
    err = refuse(
        fresh,
        csr_pem(broken.good_key(), uris=(target,)),
        token=fresh.mint("istio-system", "ztunnel"),
        metadata_fields={"ImpersonatedIdentity": target},
    )
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "--node-identity-policy allows it only demo/*" in err.details


def test_without_kubernetes_or_a_policy_a_trusted_account_may_not_impersonate(
    ca: TestCa,
) -> None:
    """Issue 23: outside Kubernetes nothing bound a trusted node account to its workloads, and
    it could act as anyone; now it needs a --node-identity-policy entry."""
    from dataclasses import replace

    bare = TestCa.with_material(
        replace(ca.config, node_identity_policy=None), ca.material, ca.issuer
    )
    err = refuse(
        bare,
        csr_pem(broken.good_key(), uris=(BACKEND,)),
        token=bare.mint("istio-system", "ztunnel"),
        metadata_fields={"ImpersonatedIdentity": BACKEND},
    )
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a --node-identity-policy entry" in err.details
    assert bare.recorder.entries == []


def test_asking_for_ones_own_identity_needs_no_right(fresh: TestCa) -> None:
    chain = fresh.issue(
        csr_pem(broken.good_key(), uris=(ME,)),
        token=fresh.mint(),
        metadata_fields={"ImpersonatedIdentity": ME},
    )
    assert identity_of(chain) == ME


def test_override_policy_signs_the_callers_identity_whatever_the_csr_asks(
    ca: TestCa, tmp_path: Path
) -> None:
    from dataclasses import replace

    override = TestCa.with_material(
        replace(ca.config, csr_san_policy="override"), ca.material, ca.issuer
    )
    csr = csr_pem(broken.good_key(), uris=(BACKEND,), dns=("x.example",))
    assert identity_of(override.issue(csr, token=override.mint())) == ME


def test_ed25519_is_signed_when_allowed(ca: TestCa) -> None:
    from dataclasses import replace

    allowed = TestCa.with_material(replace(ca.config, allow_ed25519=True), ca.material, ca.issuer)
    chain = allowed.issue(csr_pem(broken.ed25519_key(), uris=(ME,)), token=allowed.mint())
    assert identity_of(chain) == ME


class TestClientCertificate:
    """Renewal over mTLS: the client certificate's identity, when it chains to our roots."""

    def test_valid_client_certificate_renews_without_a_token(self, fresh: TestCa) -> None:
        chain = fresh.issue(
            csr_pem(broken.good_key(), uris=(ME,)), client_chain_pem=fresh.client_chain(ME)
        )
        assert identity_of(chain) == ME
        assert fresh.recorder.entries[0].authenticator == "client-cert"

    def test_expired_client_certificate_is_refused(self, fresh: TestCa) -> None:
        old = fresh.client_chain(ME, now=datetime.now(UTC) - timedelta(hours=3))
        err = refuse(fresh, csr_pem(broken.good_key(), uris=(ME,)), client_chain_pem=old)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED and "client certificate" in err.details

    def test_client_certificate_of_another_ca_is_refused(self, fresh: TestCa) -> None:
        other = create_self_signed(TrustDomain("cluster.local"), datetime.now(UTC))
        pem = fresh.client_chain(ME, material=other)
        err = refuse(fresh, csr_pem(broken.good_key(), uris=(ME,)), client_chain_pem=pem)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED and "rejected" in err.details

    @pytest.mark.parametrize(
        ("identity", "says"),
        [
            ("spiffe://example.org/ns/demo/sa/frontend", "another trust domain"),
            ("spiffe://cluster.local/node/n1", "is not ns/NS/sa/SA"),
        ],
    )
    def test_client_certificate_naming_no_workload_is_refused(
        self, fresh: TestCa, identity: str, says: str
    ) -> None:
        pem = fresh.client_chain(identity)
        err = refuse(fresh, csr_pem(broken.good_key()), client_chain_pem=pem)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED and says in err.details


def test_record_failure_answers_internal_sends_nothing_and_is_counted(fresh: TestCa) -> None:
    fresh.recorder.failing = True
    err = refuse(fresh, csr_pem(broken.good_key(), uris=(ME,)), token=fresh.mint())
    assert err.code == grpc.StatusCode.INTERNAL
    assert fresh.metric("citadel_server_success_cert_issuance_count") == 0
    assert fresh.metric("bulwark_ca_refusals_total", reason="record_failure", code="INTERNAL") == 1


def test_undecodable_request_is_invalid_argument_and_counted(fresh: TestCa) -> None:
    err = refuse(fresh, UndecodableRequest("request is not a valid IstioCertificateRequest"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        fresh.metric("bulwark_ca_refusals_total", reason="bad_request", code="INVALID_ARGUMENT")
        == 1
    )


def test_a_call_beyond_the_limit_is_refused_as_overload(ca: TestCa) -> None:
    """Covers #14.7: overload refusals came from grpc itself and were counted nowhere."""
    from dataclasses import replace

    limited = TestCa.with_material(
        replace(ca.config, max_concurrent_rpcs=1), ca.material, ca.issuer
    )

    async def run() -> Aborted:
        limited.recorder.gate = asyncio.Event()
        token = limited.mint()
        first = asyncio.create_task(
            limited.call(csr_pem(broken.good_key(), uris=(ME,)), token=token)
        )
        await asyncio.sleep(0.01)  # the first call now waits on the record
        with pytest.raises(Aborted) as err:
            await limited.call(csr_pem(broken.good_key(), uris=(ME,)), token=token)
        limited.recorder.gate.set()
        assert identity_of(await first) == ME
        return err.value

    err = asyncio.run(run())
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        limited.metric("bulwark_ca_refusals_total", reason="overload", code="RESOURCE_EXHAUSTED")
        == 1
    )
