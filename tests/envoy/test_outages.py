"""Envoy across the agent's and the CA's outages: last secrets kept, new ones pushed on return."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.ca_process import started_ca
from tests.support.envoy import EnvoyProcess, http_get, uri_sans
from tests.support.mesh import Mesh, spiffe_id


def _serial(envoy: EnvoyProcess) -> int:
    return int(envoy.served_certificate()["serial_number"], 16)


def _wait(what: str, check: Callable[[], bool], traffic: Callable[[], None]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"{what} within 30 s"
        traffic()
        time.sleep(0.1)


def test_envoy_keeps_serving_through_an_agent_restart(mesh: Mesh) -> None:
    mesh.agent("backend")
    mesh.agent("frontend")
    server = mesh.server("backend", client="frontend")
    client = mesh.client("frontend", server=server, server_sa="backend", fresh_connections=True)
    before = _serial(server)
    outcomes: list[int] = []

    def traffic() -> None:
        outcomes.append(http_get(client.port)[0])

    assert mesh.agents["backend"].stop() == 0
    for _ in range(10):  # agent gone: Envoy keeps its secrets; new handshakes still succeed
        traffic()
        time.sleep(0.1)
    assert _serial(server) == before

    agent = mesh.agent("backend")  # a new process on the same socket: new key, new certificate
    _wait(
        "the restarted agent's certificate reaches Envoy",
        lambda: _serial(server) != before,
        traffic,
    )
    served = json.loads(agent.get("/debug/certs"))["default"]
    assert _serial(server) == int(served["serial"], 16)
    traffic()
    assert outcomes and set(outcomes) == {200}, outcomes
    assert server.process.poll() is None  # type: ignore[union-attr]


@pytest.mark.slow
def test_envoy_waits_for_the_first_certificate_while_the_ca_is_down(
    tmp_path: Path, work: Path
) -> None:
    """The agent keeps Envoy's SDS stream open while the CA is unreachable (unlike Istio, which
    closes it); Envoy stays warming and goes live once the CA is back, without a restart."""
    with ExitStack() as stack:
        ca = stack.enter_context(started_ca(tmp_path / "ca"))
        ca.stop()
        mesh = Mesh(ca, work, stack)
        mesh.agent("backend", ready=False)
        mesh.wait_for_envoy = False
        server = mesh.server("backend", client="frontend")
        time.sleep(2)
        stats = server.stats()
        assert server.admin("/ready").strip() == "INITIALIZING"  # waiting for its secrets
        assert stats["sds.default.update_success"] == 0
        assert stats["sds.default.control_plane.connected_state"] == 1, "SDS stream not open"

        ca.start(ca.grpc_addr, ca.admin_addr, ca.mtls_addr or "127.0.0.1:0")
        server.wait_ready(time.monotonic() + 30)
        assert uri_sans(server.served_certificate()) == [spiffe_id("backend")]
        assert server.stats()["sds.default.init_fetch_timeout"] == 0
