"""Bad input over the wire: a real CA process, real TLS, the codes and lines a client and an
operator see. The whole policy table runs in-process in test_policy_table.py; here a sample
of its rows shows that code, message, metric and log line survive the process boundary."""

from __future__ import annotations

import json

import grpc
import pytest

from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from tests.support import broken
from tests.support.broken import TokenForge, csr_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa, start_ca
from tests.support.metrics import metric
from tests.support.policy_cases import BY_NAME, ME, Case

WIRE_SAMPLE = [
    BY_NAME[name]
    for name in (
        "no token",
        "expired",
        "impersonation by an untrusted caller",
        "CSR not PEM",
        "CA:true requested",
        "CSR for another namespace",
        "TTL above the maximum",
    )
]
CREATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def refusals(ca: RunningCa, case: Case) -> float:
    return metric(
        ca, "bulwark_ca_refusals_total", f'code="{case.code.name}",reason="{case.reason}"'
    )


@pytest.mark.parametrize("case", WIRE_SAMPLE, ids=[c.name for c in WIRE_SAMPLE])
def test_bad_input_is_refused_and_issues_nothing(shared_ca: RunningCa, case: Case) -> None:
    forge = TokenForge(shared_ca.data_dir)
    csr, token, ttl, md = case.build(forge)
    issued_before = metric(shared_ca, "citadel_server_success_cert_issuance_count")
    refused_before = refusals(shared_ca, case)
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    with pytest.raises(grpc.RpcError) as err:
        create_certificate(chan, csr, token=token, ttl_s=ttl, metadata_fields=md)
    chan.close()
    assert err.value.code() == case.code, err.value.details()
    assert case.says in (err.value.details() or ""), err.value.details()
    if token:
        assert token not in err.value.details(), "the token must never be echoed back"
    assert metric(shared_ca, "citadel_server_success_cert_issuance_count") == issued_before
    assert refusals(shared_ca, case) == refused_before + 1


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff", b"\x0a\x02\xff\xfe"], ids=["garbage", "csr not UTF-8"]
)
def test_undecodable_request_over_tls_is_invalid_argument(
    shared_ca: RunningCa, payload: bytes
) -> None:
    """Covers #12 (undecodable requests): UNKNOWN and a logged DecodeError traceback before."""
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    call = chan.unary_unary(
        CREATE, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as err:
        call(payload, timeout=10)
    chan.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "not a valid IstioCertificateRequest" in (err.value.details() or "")


def test_ca_still_issues_after_the_table(shared_ca: RunningCa) -> None:
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    chain = create_certificate(
        chan, csr_pem(broken.good_key(), uris=(ME,)), token=shared_ca.mint_token("demo", "frontend")
    )
    assert len(chain) == 2


def test_trusted_node_account_may_impersonate(shared_ca: RunningCa) -> None:
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    target = "spiffe://cluster.local/ns/demo/sa/backend"
    chain = create_certificate(
        chan,
        csr_pem(broken.good_key(), uris=(target,)),
        token=shared_ca.mint_token("istio-system", "ztunnel"),
        metadata_fields={"ImpersonatedIdentity": target},
    )
    assert str(spiffe_id_of(load_certificates(chain[0])[0])) == target


def test_every_refusal_and_issuance_left_an_info_line_and_no_traceback(
    shared_ca: RunningCa,
) -> None:
    """Covers #14.6: about 24 refusals produced no CA log line at INFO, issuance only DEBUG.
    Runs after the rows above, on the same CA."""
    log = shared_ca.log()
    assert "Traceback" not in log
    assert log.count("request refused") >= len(WIRE_SAMPLE) + 2, log
    assert "code=PERMISSION_DENIED reason=csr_policy" in log
    assert "certificate issued spiffe_id=spiffe://cluster.local/ns/demo/sa/backend" in log


def test_json_log_format_reaches_the_workers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """--log-format json: the worker's issuance and refusal lines are JSON objects."""
    ca = start_ca(tmp_path_factory.mktemp("json") / "ca", "--log-format", "json")
    try:
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        create_certificate(
            chan, csr_pem(broken.good_key(), uris=(ME,)), token=ca.mint_token("demo", "frontend")
        )
        with pytest.raises(grpc.RpcError):
            create_certificate(chan, csr_pem(broken.good_key(), uris=(ME,)), token=None)
        chan.close()
    finally:
        ca.stop()
    events = [json.loads(line) for line in ca.log().splitlines() if line.startswith("{")]
    by_message = {e["message"]: e for e in events}
    issued, refused = by_message["certificate issued"], by_message["request refused"]
    assert issued["spiffe_id"] == ME and issued["process"] == "worker-0" and issued["serial"]
    assert refused["code"] == "UNAUTHENTICATED" and refused["reason"] == "authentication"
    assert refused["peer"].startswith("ipv4:127.0.0.1:")
