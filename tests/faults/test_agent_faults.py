"""Agent faults (#13.6, #14.8): it keeps serving, says what is wrong, never forks or dies.

Real CA processes and real agents (in-process on the test's loop, or `python -m
agent` where signals, exit codes and logs matter). Every agent process's log is
checked for tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.endpoints.resources import SECRET_TYPE_URL
from agent.endpoints.status import StatusServer
from agent.errors import CaRequestFailed
from agent.runtime import Agent
from tests.support.agent import NODE, agent_config, running_agent
from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.ca_process import RunningCa, start_ca, tree_env


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    running = start_ca(tmp_path_factory.mktemp("fault-ca") / "ca")
    try:
        yield running
    finally:
        running.stop()


def no_traceback(agent: AgentProcess) -> None:
    assert "Traceback" not in agent.log(), agent.log()


async def fetch_default(socket: Path | str) -> discovery_pb2.DiscoveryResponse:
    async with grpc.aio.insecure_channel(f"unix:{os.path.abspath(socket)}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(
            node=NODE, resource_names=["default"], type_url=SECRET_TYPE_URL
        )
        return await stub.FetchSecrets(request, timeout=10)


async def test_a_garbage_ca_root_file_does_not_stop_renewals(ca: RunningCa, work: Path) -> None:
    """#13.6: the watcher rejected a garbage CA_ROOT_CA but the CA client still used it."""
    root = work / "ca-root.pem"
    shutil.copy(ca.root_cert_path, root)
    async with running_agent(agent_config(ca, work, ca_root_ca=root)) as live:
        first = await live.wait_for_svid()
        root.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        renewed = await live.agent.renewer.refresh()
        assert renewed.serial != first.serial
        assert live.agent.metrics.value("ca_root_failures_total") == 1
        root.write_bytes(b"")  # another bad state: counted again, still renewing
        again = await live.agent.renewer.refresh()
        assert again.serial != renewed.serial
        assert live.agent.metrics.value("ca_root_failures_total") == 2


def test_a_second_agent_refuses_the_live_socket(ca: RunningCa, work: Path) -> None:
    """#13.6: a second agent deleted the live one's socket as "stale" and took over."""
    first = start_agent_process(ca, work)
    try:
        first.wait_ready()
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--socket", str(first.socket)],
            cwd=work,
            env={
                **tree_env(os.environ),
                "CA_ADDR": ca.grpc_addr,
                "CA_ROOT_CA": str(ca.root_cert_path),
                "BULWARK_AGENT_STATUS_ADDR": "",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert str(first.socket) in second.stderr and "another agent" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.socket.exists()
        assert len(asyncio.run(fetch_default(first.socket)).resources) == 1
        assert first.process.poll() is None
    finally:
        assert first.stop() == 0
    assert not first.socket.exists()
    no_traceback(first)


def test_a_socket_that_answers_is_never_removed(ca: RunningCa, work: Path) -> None:
    """#13.6: without the lock (an older agent), a socket that answers is still left alone."""
    import socket as socketlib

    path = work / "live.sock"
    listener = socketlib.socket(socketlib.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--socket", str(path)],
            cwd=work,
            env={**tree_env(os.environ), "CA_ADDR": ca.grpc_addr, "BULWARK_AGENT_STATUS_ADDR": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        listener.close()
    assert result.returncode == 2
    assert str(path) in result.stderr and "answering" in result.stderr
    assert path.exists()


async def test_a_removed_socket_and_directory_are_recreated(ca: RunningCa, work: Path) -> None:
    """#13.6: a deleted socket directory was never recreated; the agent became unreachable."""
    socket = work / "uds" / "socket"
    async with running_agent(agent_config(ca, work, socket_path=socket)) as live:
        assert len((await fetch_default(socket)).resources) == 1
        shutil.rmtree(work / "uds")
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert time.monotonic() < deadline, "socket not recreated"
            await asyncio.sleep(0.05)
        assert (work / "uds").stat().st_mode & 0o777 == 0o700
        assert len((await fetch_default(socket)).resources) == 1
        assert not live.task.done()
    assert not socket.exists()


def test_sighup_rereads_and_never_exits(ca: RunningCa, work: Path) -> None:
    """#13.6: SIGHUP killed the agent and left its socket behind."""
    agent = start_agent_process(ca, work)
    try:
        agent.wait_ready()
        for _ in range(3):
            agent.process.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        assert agent.process.poll() is None, agent.log()
        agent.wait_ready()
        assert agent.socket.exists()
        assert len(asyncio.run(fetch_default(agent.socket)).resources) == 1
        assert "SIGHUP" in agent.log()
    finally:
        assert agent.stop() == 0
    no_traceback(agent)


async def test_not_ready_while_the_certificate_is_expired(ca: RunningCa, work: Path) -> None:
    """#13.6: /healthz/ready answered 200 while SDS served an expired certificate."""
    async with running_agent(agent_config(ca, work)) as live:
        svid = await live.wait_for_svid()

        def status_at(offset: timedelta) -> tuple[int, str, bytes]:
            server = StatusServer(
                cache=live.agent.cache,
                metrics=live.agent.metrics,
                now=lambda: svid.not_after + offset,
            )
            return server.route("GET", "/healthz/ready")

        assert status_at(timedelta(seconds=-1))[0] == 200
        code, _, body = status_at(timedelta(seconds=1))
        assert code == 503
        assert b"expired" in body and svid.serial.encode() in body


async def test_gauges_expiry_rotation_and_ca_reachability(ca: RunningCa, work: Path) -> None:
    """#13.6: gauges for certificate expiry (absolute), last rotation and CA reachability."""
    async with running_agent(agent_config(ca, work)) as live:
        svid = await live.wait_for_svid()
        text = live.agent.metrics.render()
        expiry = f'istio_agent_cert_expiry_timestamp_seconds{{resource_name="default"}} {svid.not_after.timestamp():g}'
        assert expiry in text
        assert live.agent.metrics.value("last_rotation_timestamp_seconds") > time.time() - 60
        assert live.agent.metrics.value("ca_reachable") == 1.0
    dead = Agent(
        agent_config(ca, work, ca_addr="127.0.0.1:9", ca_request_timeout=timedelta(seconds=1))
    )
    with pytest.raises(CaRequestFailed):
        await dead.issue()
    assert dead.metrics.value("ca_reachable") == 0.0


async def test_missing_token_file_is_named(ca: RunningCa, work: Path) -> None:
    """#14.8: a missing token showed only as the CA's "no credential"."""
    missing = work / "tokens" / "istio-token"
    with pytest.raises(CaRequestFailed) as caught:
        await Agent(agent_config(ca, work, token_path=missing)).issue()
    assert str(missing) in caught.value.public_message
    assert "BULWARK_TOKEN_PATH" in caught.value.public_message


def test_hostname_mismatch_lists_the_ca_names(ca: RunningCa, work: Path) -> None:
    """#14.8: "Hostname Verification Check failed" said nothing of ISTIOD_SAN or the CA's names.

    Run as a process: `python -m agent` marks Python's ssl missing, and the diagnosis must
    still read the CA certificate's names.
    """
    agent = start_agent_process(ca, work, extra_env={"ISTIOD_SAN": "istiod.wrong.svc"})
    try:
        deadline = time.monotonic() + 30
        while "its DNS names" not in agent.log():
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        line = next(x for x in agent.log().splitlines() if "its DNS names" in x)
        assert "istiod.istio-system.svc" in line and "ISTIOD_SAN" in line and "CA_ADDR" in line
        assert "istiod.wrong.svc" in line
    finally:
        assert agent.stop() == 0
    no_traceback(agent)


async def test_trust_domain_mismatch_says_both_and_stops_hammering(
    ca: RunningCa, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """#14.8: a trust-domain mismatch hinted at --csr-san-policy and was retried forever."""
    agent = Agent(agent_config(ca, work, trust_domain="other.local"))
    renewer = agent.renewer
    with caplog.at_level(logging.INFO, logger="agent.state.renewal"):
        for _ in range(3):
            await renewer.fire(renewer.generation)
            wait = (renewer.due - agent.clock.now()).total_seconds()
            assert wait > 55, "a definitive refusal waits the longest backoff"
    message = agent.cache.snapshot.svid_error
    assert "your TRUST_DOMAIN is other.local, the CA's is cluster.local" in message
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, "said once, not on every try"
    assert agent.metrics.value("num_outgoing_requests", request_type="csr") == 3


async def test_sighup_reload_rereads_the_root_file_at_once(ca: RunningCa, work: Path) -> None:
    """#13.6: SIGHUP re-reads the watched files now (`Agent.reload`, what the handler runs).

    With an hour-long poll interval only the reload can pick up the new root.
    """
    from datetime import UTC, datetime

    from certs.keys import KeyType, generate_key
    from certs.pem import to_pem
    from certs.profile import self_signed_root
    from certs.spiffe_id import TrustDomain

    root = work / "ca-root.pem"
    shutil.copy(ca.root_cert_path, root)
    config = agent_config(ca, work, ca_root_ca=root, file_poll_interval=timedelta(hours=1))
    async with running_agent(config) as live:
        extra = self_signed_root(
            key=generate_key(KeyType.EC_P256),
            trust_domain=TrustDomain("cluster.local"),
            now=datetime.now(UTC),
        )
        root.write_bytes(root.read_bytes() + to_pem(extra).encode())
        await asyncio.sleep(0.3)
        roots = live.agent.cache.snapshot.file_roots
        assert roots is not None and extra not in roots.certs
        await live.agent.reload()
        roots = live.agent.cache.snapshot.file_roots
        assert roots is not None and extra in roots.certs
