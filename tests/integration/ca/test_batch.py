"""BatchCreateCertificates against a real CA process: both ports, the record, the metrics.

A node agent (`bulwark-system/node-agent`, allowed `demo/*` by --node-identity-policy)
asks for itself and its workloads over 15012 with its token, then over the mTLS port with
the certificate it got. What the record holds must be exactly what was sent (its hash chain
verified by `bulwark certs verify-log`); the policy table itself is in-process
(tests/unit/ca_server/test_batch_table.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from certs.keys import generate_key, private_key_pem
from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from protos.bulwark.v1 import identity_pb2
from tests.support import broken
from tests.support.broken import csr_pem
from tests.support.ca_client import batch_create, channel
from tests.support.ca_process import RunningCa, serve_once, start_ca
from tests.support.metrics import metric
from tests.support.record_processes import recorded_serials

NODE = "spiffe://cluster.local/ns/bulwark-system/sa/node-agent"
OK = grpc.StatusCode.OK.value[0]
BATCH = "/bulwark.v1.CertificateService/BatchCreateCertificates"
BULWARK = str(Path(sys.executable).parent / "bulwark")


def workload(name: str, ns: str = "demo") -> str:
    return f"spiffe://cluster.local/ns/{ns}/sa/{name}"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    base = tmp_path_factory.mktemp("batch")
    policy = base / "policy.yaml"
    policy.write_text("bulwark-system/node-agent:\n  - demo/*\n")
    running = start_ca(
        base / "ca",
        "--node-identity-policy",
        str(policy),
        "--batch-max-certificates",
        "16",
        workers=2,
    )
    try:
        yield running
    finally:
        running.stop()


def record_url(ca: RunningCa) -> str:
    return f"sqlite:///{(ca.data_dir / 'record.db').resolve()}"


def serial_of(result: identity_pb2.CertificateResult) -> str:
    return format(load_certificates(result.cert_chain[0])[0].serial_number, "x")


def test_a_node_batch_over_both_ports_is_recorded_exactly(ca: RunningCa) -> None:
    before = set(recorded_serials(record_url(ca)))
    token = ca.mint_token("bulwark-system", "node-agent")
    node_key = generate_key()
    items: list[tuple[str | bytes, str, int]] = [
        (csr_pem(node_key), "", 3600),
        *[(csr_pem(broken.good_key()), workload(f"w{i}"), 3600) for i in range(6)],
        (csr_pem(broken.good_key()), workload("checkout", "shop"), 3600),
        ("not a CSR", workload("w0"), 3600),
        (csr_pem(broken.good_key()), "spiffe://example.org/ns/demo/sa/x", 3600),
    ]
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        results = batch_create(chan, items, token=token)
    codes = [r.status.code for r in results]
    assert codes[:7] == [OK] * 7
    assert codes[7:] == [
        grpc.StatusCode.UNAUTHENTICATED.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.UNAUTHENTICATED.value[0],
    ]
    named = [str(spiffe_id_of(load_certificates(r.cert_chain[0])[0])) for r in results[:7]]
    assert named == [NODE, *[workload(f"w{i}") for i in range(6)]]
    assert all(r.cert_chain[-1] == ca.root_cert_path.read_text() for r in results[:7])

    # the node agent renews itself and two workloads over mTLS with the certificate it got
    node_chain = "".join(results[0].cert_chain).encode()
    renew = [
        (csr_pem(generate_key()), "", 3600),
        (csr_pem(broken.good_key()), workload("w0"), 3600),
        (csr_pem(broken.good_key()), workload("w1"), 3600),
    ]
    with channel(
        ca.mtls_addr,
        ca.root_cert_path,
        client_key=private_key_pem(node_key),
        client_chain=node_chain,
    ) as chan:
        renewed = batch_create(chan, renew)
    assert [r.status.code for r in renewed] == [OK] * 3

    sent = {serial_of(r) for r in [*results[:7], *renewed]}
    recorded = set(recorded_serials(record_url(ca))) - before
    assert recorded == sent, "the record holds exactly the certificates that were sent"
    check = subprocess.run(
        [BULWARK, "certs", "verify-log", "--record", record_url(ca)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert metric(ca, "bulwark_ca_batch_size_count") >= 2
    assert "Traceback" not in ca.log()


def test_a_workload_token_gets_only_its_own_identity(ca: RunningCa) -> None:
    token = ca.mint_token("demo", "frontend")
    items: list[tuple[str | bytes, str, int]] = [
        (csr_pem(broken.good_key()), "", 3600),
        (csr_pem(broken.good_key()), workload("backend"), 3600),
    ]
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        mine, other = batch_create(chan, items, token=token)
    assert mine.status.code == OK and mine.spiffe_id == workload("frontend")
    assert other.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "CA_TRUSTED_NODE_ACCOUNTS" in other.status.message


def test_whole_call_refusals_over_the_wire(ca: RunningCa) -> None:
    token = ca.mint_token("bulwark-system", "node-agent")
    too_many: list[tuple[str | bytes, str, int]] = [(csr_pem(broken.good_key()), "", 60)] * 17
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        with pytest.raises(grpc.RpcError) as err:
            batch_create(chan, too_many, token=token)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1 to 16 certificate requests; this one has 17" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            batch_create(chan, too_many[:2], token="garbage.token.value")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        raw = chan.unary_unary(
            BATCH, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid BatchCreateCertificatesRequest" in (err.value.details() or "")
    assert "Traceback" not in ca.log()


def test_a_bad_node_identity_policy_exits_2_naming_each_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("node-agent: [demo/*]\nsys/agent:\n  - Demo/*\n")
    result = serve_once(tmp_path / "ca", "--node-identity-policy", str(policy))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"--node-identity-policy {policy}" in result.stderr
    assert "line 1: node account 'node-agent' is not NS/SA" in result.stderr
    assert "line 3: pattern 'Demo/*' has a bad namespace part" in result.stderr
