"""The CA's adversarial table (ca_cases.py) against a real CA process, gRPC and renewal ports.

Every case asserts the exact gRPC code, a message saying what was wrong (short, printable,
never the token), and that nothing changed: no certificate, no issuance-record row, no
success counted, the process alive. The CA's log joins the session-wide traceback check.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.adversarial.conftest import tracebacks_through_project
from tests.support import broken
from tests.support.broken import TokenForge, csr_pem, sa_claims
from tests.support.ca_cases import CASES, LONG_KID, ME, Call, Case, bearer
from tests.support.ca_client import SERVER_NAME
from tests.support.ca_process import RunningCa, start_ca
from tests.support.metrics import metric

MAX_DETAILS_CHARS = 600


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, watched_logs: list[Path]) -> Iterator[RunningCa]:
    running = start_ca(
        tmp_path_factory.mktemp("adversarial") / "ca",
        "--trusted-node-accounts",
        "istio-system/ztunnel",
    )
    watched_logs.append(running.log_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def forge(ca: RunningCa) -> TokenForge:
    return TokenForge(ca.data_dir)


def record_rows(ca: RunningCa) -> int:
    db = ca.data_dir / "record.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    return int(count)


def send(ca: RunningCa, call: Call) -> list[str]:
    """One CreateCertificate with exactly the headers and fields of `call`."""
    root = ca.root_cert_path.read_bytes()
    if call.mtls_client is None:
        addr, creds = ca.grpc_addr, grpc.ssl_channel_credentials(root)
    else:
        key, chain = call.mtls_client
        addr = ca.mtls_addr
        creds = grpc.ssl_channel_credentials(root, private_key=key, certificate_chain=chain)
    request = ca_pb2.IstioCertificateRequest(csr=call.csr, validity_duration=call.ttl)
    if call.fields:
        request.metadata.CopyFrom(struct_pb2.Struct())
        for key_name, value in call.fields.items():
            request.metadata.fields[key_name].string_value = value
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(addr, creds, options=options) as chan:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(chan)
        response = stub.CreateCertificate(request, metadata=call.headers, timeout=20)
    return list(response.cert_chain)


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_attack_is_refused_and_changes_nothing(
    ca: RunningCa, forge: TokenForge, case: Case
) -> None:
    call = case.build(ca, forge)
    rows, issued = record_rows(ca), metric(ca, "citadel_server_success_cert_issuance_count")
    with pytest.raises(grpc.RpcError) as err:
        send(ca, call)
    details = err.value.details() or ""
    assert err.value.code() == case.code, details
    assert case.says in details, details
    assert len(details) <= MAX_DETAILS_CHARS, f"{len(details)} characters echoed back"
    assert "\n" not in details, "a control character reached the status message"
    for _, value in call.headers:
        token = value.partition(" ")[2]
        if len(token) > 20:
            assert token not in details, "the token must never be echoed back"
    assert LONG_KID[:100] not in details
    assert ca.process is not None and ca.process.poll() is None, "the CA died"
    assert record_rows(ca) == rows, "a record row was written"
    assert metric(ca, "citadel_server_success_cert_issuance_count") == issued


def test_kubernetes_claim_of_the_wrong_type_still_issues(ca: RunningCa, forge: TokenForge) -> None:
    """Defect (505d662): `"kubernetes.io": "x"` made `.get` raise AttributeError -> INTERNAL."""
    token = forge.sign(sa_claims(**{"kubernetes.io": "not an object"}))
    chain = send(ca, Call(csr_pem(broken.good_key(), uris=(ME,)).decode(), bearer(token)))
    assert str(spiffe_id_of(load_certificates(chain[0])[0])) == ME


def test_a_token_a_second_ahead_is_accepted(ca: RunningCa, forge: TokenForge) -> None:
    """Defect (505d662): no clock-skew leeway; an issuer 1 s ahead of the CA was refused."""
    import time

    ahead = int(time.time()) + 2
    token = forge.sign(sa_claims(iat=ahead, nbf=ahead, exp=ahead + 3600))
    chain = send(ca, Call(csr_pem(broken.good_key(), uris=(ME,)).decode(), bearer(token)))
    assert len(chain) == 2


def test_the_ca_still_issues_after_the_table(ca: RunningCa) -> None:
    rows = record_rows(ca)
    token = ca.mint_token("demo", "frontend")
    chain = send(ca, Call(csr_pem(broken.good_key(), uris=(ME,)).decode(), bearer(token)))
    assert str(spiffe_id_of(load_certificates(chain[0])[0])) == ME
    assert record_rows(ca) == rows + 1


def test_the_ca_log_holds_no_traceback(ca: RunningCa) -> None:
    """Runs after the table (file order): any input that reached an unexpected exception left a
    traceback through project code in the CA's log."""
    assert tracebacks_through_project(ca.log()) == []


def test_leeway_and_lifetime_are_flags(tmp_path: Path, watched_logs: list[Path]) -> None:
    """`--token-clock-skew` and `--max-token-lifetime` reach the JWT authenticator."""
    import time

    strict = start_ca(tmp_path / "ca", "--token-clock-skew", "0s", "--max-token-lifetime", "1h")
    watched_logs.append(strict.log_path)
    try:
        forge = TokenForge(strict.data_dir)
        csr = csr_pem(broken.good_key(), uris=(ME,)).decode()
        ahead = int(time.time()) + 30
        for claims, says in (
            (sa_claims(iat=ahead, nbf=ahead, exp=ahead + 600), "not valid yet"),
            (
                sa_claims(exp=int(time.time()) + 7200),
                "lifetime exceeds the maximum this CA accepts (3600s)",
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                send(strict, Call(csr, bearer(forge.sign(claims))))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert says in (err.value.details() or "")
    finally:
        strict.stop()
