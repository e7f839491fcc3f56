"""Adversarial rows for a node agent's socket: what any local process may try (issue 23).

One real node agent (unix attestor, against a real CA) takes every row: uid 0 maps to
demo/adversary (the test process itself), 4101 to demo/frontend, 4102 to demo/backend. Rows:
another workload's resource names; the pid-reuse race (the connecting process exits and its
pid goes to a process of another identity before the agent looks: the agent is SIGSTOPped
so the race is certain, and the pid is handed out through /proc/sys/kernel/ns_last_pid);
10,000 connections from one process (bounded); a caller that changes user after connecting
(the unix analogue of a cgroup change, which tests/k8s covers with real pod cgroups); garbage
bytes, undecodable and oversized requests. After every row the agent is alive and ready; its
log holds no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.support.agent import short_dir
from tests.support.ca_process import RunningCa
from tests.support.node_agent import (
    NodeAgentProcess,
    fetch_as,
    fetch_command,
    node_ca,
    run_as,
    setpriv,
    start_node_agent,
    write_unix_identities,
)

HEADER = [("workload.spiffe.io", "true")]
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"
ADVERSARY = "spiffe://cluster.local/ns/demo/sa/adversary"
CALLER_CONNECTIONS = 16
C = grpc.StatusCode


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    with node_ca(tmp_path_factory.mktemp("node-adversarial") / "ca") as running:
        yield running


@pytest.fixture(scope="module")
def node(ca: RunningCa, watched_logs: list[Path]) -> Iterator[NodeAgentProcess]:
    with short_dir() as work:
        identities = write_unix_identities(
            work / "identities.yaml",
            [
                ({"uid": 0}, "demo/adversary"),
                ({"uid": 4101}, "demo/frontend"),
                ({"uid": 4102}, "demo/backend"),
            ],
        )
        agent = start_node_agent(
            ca,
            work,
            unix_identities=identities,
            args=("--max-caller-connections", str(CALLER_CONNECTIONS)),
        )
        watched_logs.append(agent.log_path)
        try:
            yield agent
            assert agent.get("/healthz/ready").strip() == "ready"
        finally:
            assert agent.stop() == 0, agent.log()


@pytest.fixture(autouse=True)
def still_ready(node: NodeAgentProcess) -> Iterator[None]:
    yield
    assert node.process.poll() is None, node.log()
    assert node.get("/healthz/ready").strip() == "ready"


def sds_fetch(socket_path: Path, *names: str, raw: bytes | None = None) -> grpc.RpcError | object:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        if raw is not None:
            call = channel.unary_unary(
                "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            try:
                return call(raw, timeout=20)
            except grpc.RpcError as exc:
                return exc
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(
            node={"id": "adversary"}, resource_names=list(names)
        )
        try:
            return stub.FetchSecrets(request, timeout=20)
        except grpc.RpcError as exc:
            return exc


def refusal(result: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(result, grpc.RpcError), result
    return result.code(), result.details() or ""


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (FRONTEND, "belongs to another workload; this caller is " + ADVERSARY),
        ("spiffe://other.domain/ns/demo/sa/adversary", "belongs to another workload"),
        ("file-cert:/etc/kubernetes/pki/ca.crt~/etc/kubernetes/pki/ca.key", "no file resources"),
        ("file-root:/etc/shadow", "no file resources"),
    ],
)
def test_another_workloads_resource_name_is_refused(
    node: NodeAgentProcess, name: str, words: str
) -> None:
    code, details = refusal(sds_fetch(node.socket, "default", name))
    assert code == C.PERMISSION_DENIED and words in details
    assert "BEGIN" not in details  # nothing of any certificate or key


def test_the_own_names_are_served(node: NodeAgentProcess) -> None:
    response = sds_fetch(node.socket, "default", ADVERSARY, "ROOTCA")
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    assert len(response.resources) == 3


@contextlib.contextmanager
def relay(held: socket.socket) -> Iterator[str]:
    """A local socket whose one connection is spliced to `held`: lets grpc speak over a
    connection some other process opened (its peer credentials stay that process's)."""
    with short_dir() as work:
        path = str(work / "relay")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                threading.Thread(target=pump, args=(conn, held), daemon=True).start()
                pump(held, conn)

        threading.Thread(target=serve, daemon=True).start()
        try:
            yield f"unix:{path}"
        finally:
            listener.close()
            held.close()


def connect_as(uid: int, path: Path) -> tuple[socket.socket, int]:
    """A socket connected by a child of `uid` that has exited since: (socket, its pid)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the child: become `uid`, connect, exit; nothing else
        code = 0
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            sock.connect(str(path))
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return sock, pid


def spawn_with_pid(pid: int, argv: list[str]) -> subprocess.Popen[str] | None:
    """`argv` started with exactly `pid` (ns_last_pid), or None if another fork took it."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    if process.pid == pid:
        return process
    process.kill()
    process.wait()
    return None


def test_pid_reuse_between_connect_and_attestation_gives_nothing(node: NodeAgentProcess) -> None:
    """A backend process connects and exits; before the agent looks, its pid belongs to a
    frontend process. The connection must get neither identity."""
    victim: subprocess.Popen[str] | None = None
    held: socket.socket | None = None
    node.process.send_signal(signal.SIGSTOP)  # the connection waits in the accept queue
    try:
        for _ in range(20):
            held, pid = connect_as(4102, node.socket)
            victim = spawn_with_pid(
                pid, [setpriv(), "--reuid=4101", "--regid=4101", "--clear-groups", "sleep", "60"]
            )
            if victim is not None:
                break
            held.close()
        assert victim is not None and held is not None, "could not hand the pid over (busy machine)"
        deadline = time.monotonic() + 10
        while "\nUid:\t4101\t4101" not in Path(f"/proc/{victim.pid}/status").read_text():
            assert time.monotonic() < deadline, "the pid's new owner never became uid 4101"
            time.sleep(0.01)
    finally:
        node.process.send_signal(signal.SIGCONT)
    try:
        with relay(held) as target, grpc.insecure_channel(target) as channel:
            stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
            stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=20)
            with pytest.raises(grpc.RpcError) as refused:
                next(stream)
        assert refused.value.code() == C.PERMISSION_DENIED
        assert f"the process that connected (pid {victim.pid}) has already exited" in str(
            refused.value.details()
        )
        # the pid's new owner is a frontend: had the agent looked it up by pid, it would have served it
        assert fetch_as(4101, 4101, node.socket, "x509")["spiffe_id"] == FRONTEND
    finally:
        victim.kill()
        victim.wait()


def test_ten_thousand_connections_from_one_process_are_bounded(node: NodeAgentProcess) -> None:
    before = len(os.listdir(f"/proc/{node.process.pid}/fd"))
    open_before = node.get("/debug/identities")["connections"]
    held: list[socket.socket] = []
    try:
        for _ in range(10_000):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(node.socket))
            held.append(sock)
        node.wait_until(
            lambda: (
                node.get("/debug/identities")["connections"] <= open_before + CALLER_CONNECTIONS
            ),
            what="connections beyond the caller bound closed",
        )
        # 4 fds per kept connection (the caller's, both ends of the relay, the pidfd), none
        # per refused one
        fds = len(os.listdir(f"/proc/{node.process.pid}/fd"))
        assert fds <= before + 4 * CALLER_CONNECTIONS + 8, (before, fds)
        closed = sum(1 for sock in held if _closed_by_peer(sock))
        assert closed >= 10_000 - CALLER_CONNECTIONS
        # another caller is served while the flood holds its share
        assert fetch_as(4101, 4101, node.socket, "x509")["spiffe_id"] == FRONTEND
        assert "max_caller_connections" in node.get("/metrics")
    finally:
        for sock in held:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_caller_that_changes_user_after_connecting_is_cut_off(node: NodeAgentProcess) -> None:
    done = subprocess.run(
        fetch_command(node.socket, "switch-uid", "4101"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] == ADVERSARY, result
    assert result["after"]["code"] == "PERMISSION_DENIED", result  # neither identity
    assert "now runs as uid 4101" in result["after"]["error"]
    assert result["first_stream"] in ("UNAVAILABLE", "CANCELLED"), result  # the stream was cut


def test_garbage_bytes_on_the_socket_are_dropped(node: NodeAgentProcess) -> None:
    for payload in (b"\x00" * 100, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(70_000)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(node.socket))
            with contextlib.suppress(OSError):
                sock.sendall(payload)
                while sock.recv(65536):
                    pass
    assert fetch_as(4102, 4102, node.socket, "x509")["spiffe_id"] == BACKEND


def test_undecodable_and_oversized_requests_are_refused(node: NodeAgentProcess) -> None:
    code, details = refusal(sds_fetch(node.socket, raw=b"\xff" * 11))
    assert code == C.INVALID_ARGUMENT and "not a valid DiscoveryRequest" in details
    big = discovery_pb2.DiscoveryRequest(node={"id": "x" * (5 << 20)}, resource_names=["default"])
    code, _ = refusal(sds_fetch(node.socket, raw=big.SerializeToString()))
    assert code == C.RESOURCE_EXHAUSTED
    many = [f"spiffe://cluster.local/ns/demo/sa/n{i}" for i in range(20_000)]
    code, details = refusal(sds_fetch(node.socket, *many))
    assert code == C.PERMISSION_DENIED and len(details) < 1000


def test_unmapped_users_see_permission_denied_and_the_log_stays_bounded(
    node: NodeAgentProcess,
) -> None:
    for _ in range(3):
        refused = fetch_as(4999, 4999, node.socket, "raw-x509")
        assert refused["code"] == "PERMISSION_DENIED" and "uid 4999" in refused["error"]
    done = run_as(4999, 4999, [sys.executable, "-c", "print('ok')"])
    assert done.returncode == 0
    time.sleep(0.1)
    assert "Traceback" not in node.log()
