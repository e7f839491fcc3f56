"""The CA's worker processes: start, watch, restart, and hand them new CA material.

Workers bind the same ports with SO_REUSEPORT. A material change is sent to the
running workers over their pipes and applied in place, so no listening socket
is closed (closing one would reset connections queued on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import multiprocessing
import os
import socket
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from ca_server.errors import ConfigError
from ca_server.process.worker import KEYS_APPLIED, WorkerKeys, WorkerSpec, run_worker

log = logging.getLogger("ca_server")
WORKER_START_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 6.0
KEYS_APPLY_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = 1.0


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def bind_socket(host: str, port: int, *, option: int, what: str) -> socket.socket:
    """A TCP socket bound to host:port with `option` set; a ConfigError naming `what` if taken."""
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every kept-alive admin response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the {what} {host}:{port}: {exc.strerror}") from exc
    return sock


def probe_free(host: str, port: int, *, what: str) -> None:
    """Refuse a port another process listens on, before this CA makes its own SO_REUSEPORT group.

    A plain bind (SO_REUSEADDR for TIME_WAIT leftovers, never SO_REUSEPORT) fails while any
    other socket listens there, including another CA's workers, which a SO_REUSEPORT bind
    would silently join.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                who = f"another process ({holder})" if holder else "another process"
                raise ConfigError(
                    f"{what} {host}:{port} is already in use by {who}; stop it or "
                    f"choose another {what}"
                ) from None
            raise ConfigError(f"cannot bind {what} {host}:{port}: {exc.strerror}") from None


def port_holder(port: int) -> str | None:
    """`pid N (name)` of a process listening on TCP `port`, when /proc shows one (best effort)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
    return None


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket so every worker can bind the same port."""
    return bind_socket(host, port, option=socket.SO_REUSEPORT, what="gRPC address")


@dataclass(frozen=True, slots=True)
class Worker:
    process: BaseProcess
    pipe: Connection  # the supervisor's end: keys go out, acknowledgements come back


@dataclass
class WorkerPool:
    spec: WorkerSpec
    count: int
    workers: dict[int, Worker] = field(default_factory=dict)
    starting: set[BaseProcess] = field(default_factory=set)  # spawned, not yet ready
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _spawn(self, index: int) -> Worker:
        ctx = multiprocessing.get_context("spawn")
        pipe, child = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=run_worker,
            args=(replace(self.spec, index=index), child),
            name=f"bulwark-ca-worker-{index}",
            daemon=True,  # never outlive the supervisor, whatever path it exits by
        )
        process.start()
        self.starting.add(process)  # daemon=True covers the instant before this line
        try:
            child.close()
            if not pipe.poll(WORKER_START_TIMEOUT_S):
                process.kill()
                raise ConfigError(
                    f"CA worker {index} did not start within {WORKER_START_TIMEOUT_S:.0f}s; "
                    "see its log"
                )
            try:
                pipe.recv()
            except EOFError as exc:
                raise ConfigError(
                    f"CA worker {index} exited during start-up; see the log above"
                ) from exc
        finally:
            self.starting.discard(process)
        return Worker(process, pipe)

    async def start(self) -> None:
        async with self._lock:
            for index in range(self.count):
                self.workers[index] = await asyncio.to_thread(self._spawn, index)

    def readiness(self) -> tuple[bool, str]:
        dead = [i for i, w in self.workers.items() if not w.process.is_alive()]
        if dead or len(self.workers) < self.count:
            return False, f"worker(s) {dead} not running"
        return True, f"{len(self.workers)} worker(s) serving"

    async def watch(self) -> None:
        """Restart workers that die (a crash in one must not take the CA down)."""
        while True:
            await asyncio.sleep(RESTART_BACKOFF_S)
            async with self._lock:
                for index, worker in list(self.workers.items()):
                    if worker.process.is_alive():
                        continue
                    log.error(
                        "CA worker %d exited with code %s; restarting it",
                        index,
                        worker.process.exitcode,
                    )
                    _forget(worker)
                    self.workers[index] = await asyncio.to_thread(self._spawn, index)

    async def update(self, keys: WorkerKeys) -> None:
        """Give every worker new keys; one that cannot take them is restarted with them."""
        async with self._lock:
            self.spec = replace(self.spec, keys=keys)
            for index, worker in self.workers.items():
                problem = await asyncio.to_thread(_send_keys, worker, keys)
                if problem is not None:
                    log.error(
                        "CA worker %d %s; restarting it with the new material", index, problem
                    )
                    await asyncio.to_thread(_stop, worker.process)
            log.info("%d CA worker(s) now sign with the new CA material", len(self.workers))

    def stop(self) -> None:
        """Terminate every worker, including one still starting."""
        processes = [*(w.process for w in self.workers.values()), *self.starting]
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            _stop(process)
        for worker in self.workers.values():
            worker.pipe.close()


def _send_keys(worker: Worker, keys: WorkerKeys) -> str | None:
    """Send `keys` and wait for the answer; None when applied, else what went wrong."""
    try:
        worker.pipe.send(keys)
        if not worker.pipe.poll(KEYS_APPLY_TIMEOUT_S):
            return f"did not apply the new material within {KEYS_APPLY_TIMEOUT_S:.0f}s"
        answer = worker.pipe.recv()
    except (EOFError, OSError):
        return "is gone"
    return None if answer == KEYS_APPLIED else str(answer)


def _stop(process: BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
    process.join(timeout=WORKER_STOP_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()


def _forget(worker: Worker) -> None:
    """Release a dead worker: its pipe, and its live gauges (its counters stay aggregated)."""
    worker.pipe.close()
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        if worker.process.pid is not None:
            multiprocess.mark_process_dead(worker.process.pid)  # type: ignore[no-untyped-call]
