"""Issue 22: what an agent logs for the mix-ups of a first hour, against a real CA process:
CA_ADDR at the CA's client-certificate port (the CA closes the TLS handshake: grpc says only
"Socket closed"), and a SECRET_TTL beyond the CA's maximum (named in the unit it reads)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.ca_process import RunningCa


def logged(agent: AgentProcess, needle: str, timeout: float = 20.0) -> str:
    """The first log line holding `needle`, waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.log().splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no {needle!r} in the agent's log:\n{agent.log()[-3000:]}")


@pytest.mark.slow
def test_ca_addr_at_the_mtls_port_is_named(shared_ca: RunningCa, work: Path) -> None:
    agent = start_agent_process(shared_ca, work, extra_env={"CA_ADDR": shared_ca.mtls_addr})
    try:
        line = logged(agent, "CSR failed")
        assert "Socket closed" in line
        assert "closed the connection during the TLS handshake" in line
        assert "CA_ADDR is probably its client-certificate port" in line
        assert "point CA_ADDR at its token port (15012 by default)" in line
    finally:
        agent.stop()


@pytest.mark.slow
def test_a_secret_ttl_beyond_the_maximum_is_named(shared_ca: RunningCa, work: Path) -> None:
    agent = start_agent_process(shared_ca, work, extra_env={"SECRET_TTL": "100d"})
    try:
        line = logged(agent, "the CA refused the CSR")
        assert "INVALID_ARGUMENT" in line
        assert "SECRET_TTL asks for 100d and the CA issues at most 90d" in line
    finally:
        agent.stop()
