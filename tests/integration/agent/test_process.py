"""`python -m agent` as a process: OUTPUT_CERTS, status endpoints and CLI, SIGTERM, memory."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.support.agent import NODE, SdsStream
from tests.support.agent_process import REPO, AgentProcess, start_agent_process
from tests.support.ca_process import RunningCa, tree_env

SERIES = (
    'istio_agent_outgoing_latency{request_type="csr"}',
    'istio_agent_num_outgoing_requests{request_type="csr"}',
    'istio_agent_num_failed_outgoing_requests{request_type="csr"}',
    'istio_agent_num_outgoing_retries{request_type="csr"}',
    'istio_agent_cert_expiry_seconds{resource_name="default"}',
    'istio_agent_cert_expiry_seconds{resource_name="ROOTCA"}',
    "istio_agent_num_file_watcher_failures_total",
    "istio_agent_num_file_secret_failures_total",
)


def bulwark(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from certs.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_output_certs_status_cli_and_sigterm(shared_ca: RunningCa, work: Path) -> None:
    out = work / "out"
    agent = start_agent_process(shared_ca, work, extra_env={"OUTPUT_CERTS": str(out)})
    try:
        report_footprint(agent)
        check_no_python_openssl(agent)
        check_output_certs(out)
        serial = check_status_port(agent)
        check_status_cli(agent, serial)

        # SIGTERM: open streams end cleanly (OK), socket removed, exit 0 within 5 s
        code, stream_status, took = asyncio.run(_sigterm_with_open_stream(agent))
        assert code == 0, agent.log()
        assert stream_status == grpc.StatusCode.OK
        assert took < 5.0
        assert not agent.socket.exists()
        assert "PRIVATE KEY" not in agent.log() and "eyJ" not in agent.log()  # no key, no JWT
    finally:
        agent.stop()


def report_footprint(agent: AgentProcess) -> None:
    first_cert_s = agent.wait_ready()
    time.sleep(0.5)
    memory = agent.memory_kb()
    print(
        f"\nagent (RSA 2048, Istio's default): first certificate {first_cert_s * 1000:.0f} ms "
        f"after spawn; VmRSS {memory['VmRSS'] / 1024:.1f} MB (anon "
        f"{memory['RssAnon'] / 1024:.1f} MB, shared files {memory['RssFile'] / 1024:.1f} MB)"
    )
    own = [line for line in agent.log().splitlines() if "first certificate" in line]
    print("agent log: " + (own[0].split(": ", 1)[-1] if own else "(no first-certificate line)"))


def check_no_python_openssl(agent: AgentProcess) -> None:
    """`python -m agent` keeps Python's OpenSSL bindings (4.5 MB resident) out; see agent/__main__."""
    mapped = Path(f"/proc/{agent.process.pid}/maps").read_text()
    for library in ("/_ssl.", "/_hashlib.", "/libssl.so", "/libcrypto.so"):
        assert library not in mapped, f"the agent process maps {library}"


def check_output_certs(out: Path) -> None:
    """Three files, key 0600, the chain verifies with openssl and names the workload."""
    for name in ("key.pem", "cert-chain.pem", "root-cert.pem"):
        assert (out / name).exists(), name
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    chain, root = str(out / "cert-chain.pem"), str(out / "root-cert.pem")
    verify = openssl("verify", "-CAfile", root, "-untrusted", chain, chain)
    assert verify.returncode == 0, verify.stderr
    san = openssl("x509", "-in", chain, "-noout", "-ext", "subjectAltName")
    assert "URI:spiffe://cluster.local/ns/demo/sa/frontend" in san.stdout
    check = openssl("pkey", "-in", str(out / "key.pem"), "-noout", "-check")
    assert check.returncode == 0, check.stderr


def check_status_port(agent: AgentProcess) -> str:
    """Every series present; the debug page never holds a key. Returns the serial served."""
    metrics = agent.get("/metrics")
    for series in SERIES:
        assert series in metrics, series
    debug = json.loads(agent.get("/debug/certs"))
    assert debug["default"]["spiffe_id"] == "spiffe://cluster.local/ns/demo/sa/frontend"
    assert debug["root_fingerprints"]
    assert "PRIVATE KEY" not in json.dumps(debug)
    return str(debug["default"]["serial"])


def check_status_cli(agent: AgentProcess, serial: str) -> None:
    """`bulwark agent status`, human and JSON; no key in either."""
    human = bulwark("agent", "status", "--socket", str(agent.socket))
    assert human.returncode == 0, human.stderr
    assert "spiffe://cluster.local/ns/demo/sa/frontend" in human.stdout
    assert "ROOTCA" in human.stdout and "Root fingerprints" in human.stdout
    assert serial in human.stdout
    as_json = bulwark("agent", "status", "--socket", str(agent.socket), "--json")
    report = json.loads(as_json.stdout)
    assert report["workload_api"]["spiffe_id"].endswith("/sa/frontend")
    assert "PRIVATE KEY" not in human.stdout + as_json.stdout


async def _sigterm_with_open_stream(agent: AgentProcess) -> tuple[int, grpc.StatusCode, float]:
    async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as channel:
        stream = SdsStream(channel)
        await stream.send(node=NODE, resource_names=["default", "ROOTCA"])
        await stream.next()
        svids = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)
        )
        await svids.read()
        started = time.monotonic()
        code = await asyncio.to_thread(agent.stop)
        took = time.monotonic() - started
        status = await asyncio.wait_for(stream.ended, 5)
        assert await svids.read() is grpc.aio.EOF
        assert await svids.code() == grpc.StatusCode.OK
    return code, status, took


def test_stale_socket_is_replaced_and_bad_config_exits_2(shared_ca: RunningCa, work: Path) -> None:
    import socket as socketlib

    stale = work / "frontend.sock"
    leftover = socketlib.socket(socketlib.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()
    agent = start_agent_process(shared_ca, work)
    try:
        agent.wait_ready()
    finally:
        assert agent.stop() == 0
    bad = subprocess.run(
        [sys.executable, "-m", "agent", "--secret-ttl", "forever"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,
        env={**tree_env(os.environ), "BULWARK_AGENT_STATUS_ADDR": ""},
    )
    assert bad.returncode == 2
    assert "--secret-ttl" in bad.stderr


# Modules an agent without a status port must not load to reach its first certificate: the
# status port's, the CA's certificate profiles, the HTTP frameworks and libraries the agent
# avoids on purpose (docs/AGENT.md, "Footprint"), and what only a failure or a JWT needs.
NOT_BEFORE_FIRST_CERT = (
    "agent.node",  # node mode (--mode node) alone loads it
    "agent.endpoints.status",
    "certs.profile",
    "agent.upstream.diagnosis",
    "agent.state.jwt_validate",
    "agent.cli.status",
    "fastapi",
    "pydantic",
    "uvicorn",
    "starlette",
    "prometheus_client",
    "spiffe",
    "_ssl",
)


def test_first_certificate_loads_only_what_it_needs(shared_ca: RunningCa, work: Path) -> None:
    """#18.4: the agent loaded its status port (and the CA's certificate profiles through
    `certs/__init__`) even when the status port was disabled. The module list comes from
    Python's own `-X importtime` report of a real `python -m agent` up to its first certificate."""
    agent = start_agent_process(
        shared_ca,
        work,
        extra_env={"PYTHONPROFILEIMPORTTIME": "1", "BULWARK_AGENT_STATUS_ADDR": ""},
    )
    try:
        deadline = time.monotonic() + 30
        while "first certificate" not in agent.log():
            assert agent.process.poll() is None and time.monotonic() < deadline, agent.log()
            time.sleep(0.02)
    finally:
        assert agent.stop() == 0
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in agent.log().splitlines()
        if line.startswith("import time:") and "cumulative" not in line
    }
    assert {
        "agent.runtime",
        "agent.endpoints.sds",
        "agent.endpoints.workload_api",
    } <= imported  # the report works
    loaded = sorted(
        name
        for name in imported
        if any(name == top or name.startswith(top + ".") for top in NOT_BEFORE_FIRST_CERT)
    )
    assert loaded == [], f"loaded before the first certificate: {loaded}"
