"""Every citadel_server_* series of docs/COMPATIBILITY.md §1 is exported and moves when it should."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from certs.keys import generate_key
from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from tests.support.broken import TokenForge, csr_pem, sa_claims
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa, start_ca
from tests.support.metrics import metric

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
COUNTERS = (
    "citadel_server_csr_count",
    "citadel_server_authentication_failure_count",
    "citadel_server_success_cert_issuance_count",
    "citadel_server_csr_parsing_err_count",
    "citadel_server_id_extraction_err_count",
)


def test_counters_move_with_requests_across_two_workers(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca", workers=2)
    try:
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        forge = TokenForge(ca.data_dir)
        good = ca.mint_token("demo", "frontend")

        def call(csr: bytes | str, token: str | None, ttl: int = 3600) -> None:
            with contextlib.suppress(grpc.RpcError):
                create_certificate(chan, csr, token=token, ttl_s=ttl)

        for _ in range(4):
            call(csr_pem(generate_key(), uris=(ME,)), good)
        call(csr_pem(generate_key(), uris=(ME,)), None)  # auth failure
        call(
            csr_pem(generate_key(), uris=(ME,)), forge.sign(sa_claims(sub="user:bob"))
        )  # id extraction
        call("not a csr", good)  # parse error, CSR_ERROR
        call(csr_pem(generate_key(), uris=(ME,)), good, ttl=10**9)  # TTL_ERROR
        time.sleep(0.2)
        assert metric(ca, "citadel_server_csr_count") == 8
        assert metric(ca, "citadel_server_success_cert_issuance_count") == 4
        assert metric(ca, "citadel_server_authentication_failure_count") == 2
        assert metric(ca, "citadel_server_id_extraction_err_count") == 1
        assert metric(ca, "citadel_server_csr_parsing_err_count") == 1
        assert metric(ca, "citadel_server_csr_sign_err_count", 'error="CSR_ERROR"') == 1
        assert metric(ca, "citadel_server_csr_sign_err_count", 'error="TTL_ERROR"') == 1
        expiry = metric(ca, "citadel_server_root_cert_expiry_timestamp")
        assert expiry > time.time() + 9 * 365 * 86400
        assert metric(ca, "citadel_server_root_cert_expiry_seconds") == pytest.approx(
            expiry - time.time(), abs=60
        )
        assert metric(ca, "citadel_server_cert_chain_expiry_timestamp") == expiry
        assert metric(ca, "citadel_server_cert_chain_expiry_seconds") > 0
    finally:
        ca.stop()


def exposition(ca: RunningCa) -> str:
    return str(urllib.request.urlopen(f"{ca.admin_url}/metrics", timeout=5).read().decode())


def test_refusal_series_exist_at_zero_and_jwt_svids_are_counted(tmp_path: Path) -> None:
    """Issue 22: `bulwark_ca_refusals_total` was absent until the first refusal (a rate or an
    alert on it had no series), and JWT-SVIDs were counted nowhere."""
    ca = start_ca(tmp_path / "ca", workers=2)
    try:
        text = exposition(ca)  # before any call
        for reason, code in (
            ("authentication", "UNAUTHENTICATED"),
            ("authentication", "UNAVAILABLE"),
            ("csr_policy", "PERMISSION_DENIED"),
            ("csr_policy", "INVALID_ARGUMENT"),
            ("bad_request", "INVALID_ARGUMENT"),
            ("overload", "RESOURCE_EXHAUSTED"),
            ("record_failure", "INTERNAL"),
            ("internal", "INTERNAL"),
        ):
            labels = f'cluster="Kubernetes",code="{code}",reason="{reason}"'  # the own cluster
            line = f"bulwark_ca_refusals_total{{{labels}}} 0.0"
            assert line in text.splitlines(), f"missing before the first refusal: {line}"
        assert "bulwark_ca_jwt_svids_issued_total 0.0" in text.splitlines()
        stub = identity_pb2_grpc.WorkloadIdentityServiceStub(
            channel(ca.grpc_addr, ca.root_cert_path)
        )
        token = ca.mint_token("demo", "frontend")
        for _ in range(3):
            stub.MintJWTSVID(
                identity_pb2.MintJWTSVIDRequest(audience=["spiffe://cluster.local/ns/demo/sa/b"]),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10,
            )
        assert metric(ca, "bulwark_ca_jwt_svids_issued_total") == 3
        assert metric(ca, "citadel_server_success_cert_issuance_count") == 0  # certificates only
    finally:
        ca.stop()
