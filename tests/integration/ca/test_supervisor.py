"""Worker processes live and die with their supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from certs.keys import generate_key
from tests.support.broken import csr_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import serve_once, start_ca

ME = "spiffe://cluster.local/ns/demo/sa/frontend"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _is_worker(pid: int) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    return b"spawn_main" in cmdline and b"resource_tracker" not in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_killed_worker_is_restarted(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca", workers=2)
    try:
        assert ca.process is not None
        workers = [p for p in _children(ca.process.pid) if _is_worker(p)]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "restarting it" not in ca.log():
            assert time.monotonic() < deadline, ca.log()[-2000:]
            time.sleep(0.1)
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        for _ in range(6):  # both workers answer, whichever the kernel picks
            create_certificate(
                chan, csr_pem(generate_key(), uris=(ME,)), token=ca.mint_token("demo", "frontend")
            )
    finally:
        ca.stop()


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca", workers=2)
    assert ca.process is not None
    children = _children(ca.process.pid)
    assert children, "the supervisor has worker processes"
    ca.process.send_signal(signal.SIGKILL)
    ca.process.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in children):
        assert time.monotonic() < deadline, "workers kept running without their supervisor"
        time.sleep(0.1)


def test_stopping_while_a_worker_restarts_leaves_no_worker_behind(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca", workers=2)
    assert ca.process is not None
    supervisor = ca.process.pid
    first = [p for p in _children(supervisor) if _is_worker(p)]
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "restarting it" not in ca.log():
        assert time.monotonic() < deadline, ca.log()[-2000:]
        time.sleep(0.02)
    # The replacement is being spawned right now; stopping must still end everything.
    starting = [p for p in _children(supervisor) if _is_worker(p) and p not in first]
    assert ca.stop() == 0, ca.log()[-2000:]
    for pid in [*first, *starting]:
        assert not _alive(pid), f"worker {pid} outlived its supervisor"


def test_admin_connections_are_accepted_with_nagle_off() -> None:
    # Nagle plus the client's delayed ACK held every kept-alive admin response ~40 ms.
    import asyncio
    import socket

    from ca_server.process.ports import bind_socket

    async def accepted_nodelay() -> int:
        flags: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = bind_socket("127.0.0.1", 0, option=socket.SO_REUSEADDR, what="test address")
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            while not flags:
                await asyncio.sleep(0.01)
            writer.close()
        return flags[0]

    assert asyncio.run(accepted_nodelay()) != 0


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (from /proc/net/tcp, state 0A)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


@pytest.mark.parametrize("flag", ["--grpc-addr", "--mtls-grpc-addr", "--admin-addr"])
def test_a_second_ca_on_a_port_in_use_exits_2(tmp_path: Path, flag: str) -> None:
    """Issue #13 item 2: a second CA with another data dir on the same --grpc-addr joined the
    live one's SO_REUSEPORT group (5 of 12 handshakes reached it); it only exited when the
    admin port collided too. Now any port in use is exit 2 before anything binds."""
    ca = start_ca(tmp_path / "first", workers=2)
    try:
        addr = {"--grpc-addr": ca.grpc_addr, "--mtls-grpc-addr": ca.mtls_addr}.get(
            flag, ca.admin_addr
        )
        port = int(addr.rsplit(":", 1)[1])
        before = _listeners(port)
        result = serve_once(tmp_path / "second", "--mtls-grpc-addr", "127.0.0.1:0", flag, addr)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert f"{flag} {addr} is already in use" in result.stderr, result.stderr
        # Issue 22: the CA to stop is named, not the worker holding a gRPC port.
        assert ca.process is not None
        assert f"in use by pid {ca.process.pid}, `python -m ca_server " in result.stderr
        if flag != "--admin-addr":  # the workers hold the gRPC ports; the supervisor the admin's
            assert "(its worker pid " in result.stderr, result.stderr
        assert _listeners(port) == before, "the second CA joined the first one's listeners"
    finally:
        assert ca.stop() == 0


def test_a_second_ca_on_the_same_data_dir_exits_2_naming_the_first(tmp_path: Path) -> None:
    """Issue #13 Build, exclusive ownership: two CAs shared one data dir (key, record)."""
    ca = start_ca(tmp_path / "ca")
    try:
        assert ca.process is not None
        result = serve_once(tmp_path / "ca")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert str(tmp_path / "ca") in result.stderr
        assert f"pid {ca.process.pid}" in result.stderr, result.stderr
    finally:
        assert ca.stop() == 0
    start_ca(tmp_path / "ca").stop()  # the lock goes with its holder
