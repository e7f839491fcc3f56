"""A node agent with the unix attestor, as the independent check runs it (issue 23).

A real CA, a real `python -m agent run --mode node --attestor unix --unix-identities FILE`
(run as root, as on a VM), and callers that are real processes of other users (`setpriv`)
using the `spiffe` package: each gets the SVID its uid (or gid and executable) maps to,
verified by openssl against the CA's root; an unmapped uid is refused with PERMISSION_DENIED
naming its uid and path. JWT-SVIDs name the caller too (minted as the workload over the CA's
client-certificate port). Pods of one identity share its certificate; the identity is freed
when its last holder leaves, and a stream ends when its process dies.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import short_dir
from tests.support.ca_process import RunningCa
from tests.support.metrics import metric
from tests.support.node_agent import (
    NodeAgentProcess,
    fetch_as,
    fetch_command,
    node_ca,
    spawn_as,
    start_node_agent,
    write_unix_identities,
)
from tests.support.openssl import openssl

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"
PYTHON = os.path.realpath(sys.executable)  # what /proc/<pid>/exe links for the callers


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    with node_ca(tmp_path_factory.mktemp("node-unix") / "ca") as running:
        yield running


@pytest.fixture(scope="module")
def node(ca: RunningCa) -> Iterator[NodeAgentProcess]:
    with short_dir() as work:
        identities = write_unix_identities(
            work / "identities.yaml",
            [
                ({"uid": 4101}, "demo/frontend"),
                ({"gid": 4200, "path": PYTHON}, BACKEND),
            ],
        )
        agent = start_node_agent(ca, work, unix_identities=identities)
        try:
            yield agent
        finally:
            assert agent.stop() == 0, agent.log()


def verify(chain: str, ca: RunningCa, work: Path) -> None:
    """openssl verifies the SVID chain against the CA's root, as a peer would."""
    (work / "chain.pem").write_text(chain)
    openssl("verify", "-CAfile", str(ca.root_cert_path), str(work / "chain.pem"))


def test_each_uid_gets_its_mapped_svid_and_an_unmapped_uid_is_refused(
    node: NodeAgentProcess, ca: RunningCa, work: Path
) -> None:
    frontend = fetch_as(4101, 4101, node.socket, "x509")
    backend = fetch_as(4102, 4200, node.socket, "x509")
    assert (frontend.get("spiffe_id"), backend.get("spiffe_id")) == (FRONTEND, BACKEND), (
        frontend,
        backend,
    )
    for svid in (frontend, backend):
        verify(svid["chain"], ca, work)
        assert svid["bundle"] == ca.root_cert_path.read_text()
    refused = fetch_as(4999, 4999, node.socket, "x509")
    assert refused["code"] == "PERMISSION_DENIED", refused
    assert "no identity for uid 4999" in refused["error"] and PYTHON in refused["error"]


def test_workload_certificates_come_through_the_batch_call(
    node: NodeAgentProcess, ca: RunningCa
) -> None:
    """Bulwark's CA has BatchCreateCertificates: the node agent asks it there, not one
    CreateCertificate per identity (that is its fallback for a CA without it, as Istio's)."""
    items, calls = (metric(ca, f"bulwark_ca_batch_size_{s}") for s in ("sum", "count"))
    holders = [spawn_as(uid, gid, fetch_command(node.socket, "hold", "60")) for uid, gid in
               ((4101, 4101), (4102, 4200))]  # fmt: skip
    try:
        for holder in holders:
            assert holder.stdout is not None and json.loads(holder.stdout.readline())["serial"]
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert node.get("/debug/identities")["ca_call"] == "BatchCreateCertificates"
    assert metric(ca, "bulwark_ca_batch_size_count") > calls
    assert metric(ca, "bulwark_ca_batch_size_sum") - items >= 1


def test_an_unmapped_uid_sees_the_exact_status(node: NodeAgentProcess) -> None:
    raw = fetch_as(4998, 4101, node.socket, "raw-x509")  # the gid alone maps nothing
    assert raw["code"] == "PERMISSION_DENIED"
    assert raw["error"].startswith("no identity for uid 4998 (gid 4101, path ")


def test_jwt_svids_name_the_caller(node: NodeAgentProcess) -> None:
    jwt = fetch_as(4101, 4101, node.socket, "jwt", "db")
    assert jwt.get("spiffe_id") == FRONTEND, jwt
    payload = jwt["token"].split(".")[1]
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == FRONTEND and claims["aud"] in ("db", ["db"])


def test_one_identity_is_shared_and_freed_when_its_last_holder_leaves(
    node: NodeAgentProcess,
) -> None:
    holders = [spawn_as(4101, 4101, fetch_command(node.socket, "hold", "60")) for _ in range(2)]
    try:
        serials = [json.loads(h.stdout.readline())["serial"] for h in holders if h.stdout]
        assert len(serials) == 2 and serials[0] == serials[1]  # one certificate for both
        node.wait_until(lambda: len(node.identities().get(FRONTEND, [])) == 2, what="two holders")
        holders[0].kill()
        holders[0].wait()
        node.wait_until(lambda: len(node.identities().get(FRONTEND, [])) == 1, what="one holder")
        holders[1].send_signal(signal.SIGKILL)  # the process dies mid-stream
        holders[1].wait()
        node.wait_until(lambda: FRONTEND not in node.identities(), timeout=5, what="identity freed")
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert "spiffe://cluster.local/ns/demo/sa/frontend has no holder left" in node.log()


def test_the_node_socket_is_open_to_every_user_by_default(node: NodeAgentProcess) -> None:
    assert stat.S_IMODE(node.socket.stat().st_mode) == 0o666
    assert stat.S_IMODE(node.socket.parent.stat().st_mode) == 0o755


def test_socket_modes_are_configurable(ca: RunningCa, work: Path) -> None:
    identities = write_unix_identities(work / "ids.yaml", [({"uid": 4101}, "demo/frontend")])
    agent = start_node_agent(
        ca,
        work,
        unix_identities=identities,
        args=("--node-socket-mode", "0660", "--node-socket-dir-mode", "0750"),
    )
    try:
        assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o660
        assert stat.S_IMODE(agent.socket.parent.stat().st_mode) == 0o750
    finally:
        assert agent.stop() == 0


def test_agent_status_lists_identities_and_their_holders(node: NodeAgentProcess) -> None:
    holder = spawn_as(4101, 4101, fetch_command(node.socket, "hold", "60"))
    try:
        assert holder.stdout is not None and json.loads(holder.stdout.readline())["serial"]
        shown = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--node", "--status-addr", node.status_addr],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert FRONTEND in shown.stdout and f"pid {holder.pid}" in shown.stdout  # setpriv execs
        assert "1 identities" in shown.stdout and "unix attestor" in shown.stdout
        assert "certificates asked for with BatchCreateCertificates" in shown.stdout
        as_json = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "status",
                "--node",
                "--status-addr",
                node.status_addr,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        (item,) = [
            i for i in json.loads(as_json.stdout)["identities"] if i["spiffe_id"] == FRONTEND
        ]
        assert item["seconds_left"] > 0 and item["serial"] and "key" not in json.dumps(item).lower()
        assert item["holders"] == [f"pid {holder.pid} (uid 4101, gid 4101, {PYTHON})"]
    finally:
        holder.kill()
        holder.wait()


def test_a_bad_identities_file_stops_the_agent_naming_each_line(ca: RunningCa, work: Path) -> None:
    bad = work / "bad.yaml"
    bad.write_text(
        "identities:\n  - match: {uid: 4101}\n    identity: demo/ok\n"
        "  - match: {uid: nope}\n    identity: demo/x\n  - match: {uid: 3}\n    identity: a/b/c\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--mode", "node", "--attestor", "unix",
         "--unix-identities", str(bad), "--socket", str(work / "s"), "--status-addr", ""],
        capture_output=True, text=True, timeout=60, check=False, cwd=work,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "line 4 (entry 2): uid 'nope'" in done.stderr
    assert "line 6 (entry 3): identity 'a/b/c'" in done.stderr
    assert "Traceback" not in done.stderr


def test_then_the_node_agent_authenticates_with_its_own_certificate(
    ca: RunningCa, work: Path
) -> None:
    """Its token first (its own certificate asked for with it), then that certificate on the
    CA's client-certificate port: with the token gone, workloads still get theirs."""
    identities = write_unix_identities(work / "ids.yaml", [({"uid": 4102}, "demo/backend")])
    agent = start_node_agent(ca, work, unix_identities=identities)
    try:
        agent.wait_until(
            lambda: agent.get("/debug/identities")["own"]["authenticates_with"] == "certificate",
            what="the node agent's own certificate",
        )
        own = agent.get("/debug/identities")["own"]
        assert own["seconds_left"] > 0 and own["serial"]
        (work / "node-agent-token").unlink()
        assert fetch_as(4102, 4102, agent.socket, "x509").get("spiffe_id") == BACKEND
        assert "no such file" not in agent.log().lower()
    finally:
        assert agent.stop() == 0


@pytest.mark.slow
def test_a_ca_that_is_down_is_asked_again_and_the_caller_served_once_it_is_back(
    work: Path, tmp_path: Path
) -> None:
    """The batch call fails UNAVAILABLE while the CA is down: the node agent keeps the caller's
    stream open, retries (Istio's waits, then the renewal's backoff) on a fresh channel, and
    serves the caller once the CA is back on the same ports."""
    with node_ca(tmp_path / "ca") as ca:
        identities = write_unix_identities(work / "ids.yaml", [({"uid": 4101}, "demo/frontend")])
        agent = start_node_agent(ca, work, unix_identities=identities)
        holder = None
        try:
            ca.stop()
            holder = spawn_as(4101, 4101, fetch_command(agent.socket, "hold", "60"))
            agent.wait_until(
                lambda: "UNAVAILABLE" in str(agent.get("/debug/identities")["identities"]),
                timeout=30,
                what="the CA's absence noticed",
            )
            ca.start(ca.grpc_addr, ca.admin_addr, ca.mtls_addr)
            assert holder.stdout is not None
            assert json.loads(holder.stdout.readline())["serial"], agent.log()[-3000:]
            retries = re.search(
                r'^istio_agent_num_outgoing_retries\{request_type="csr"\} ([0-9.]+)$',
                agent.get("/metrics"),
                re.MULTILINE,
            )
            assert retries is not None and float(retries.group(1)) >= 1
            (item,) = agent.get("/debug/identities")["identities"]
            assert item["spiffe_id"] == FRONTEND and item["seconds_left"] > 0 and not item["error"]
        finally:
            if holder is not None:
                holder.kill()
                holder.wait()
            assert agent.stop() == 0
