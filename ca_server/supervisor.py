"""The CA's worker processes: start, watch, restart, and replace them when material changes.

Workers bind the same ports with SO_REUSEPORT, so a replacement worker starts serving
before the one it replaces stops: a rolling swap with no refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import multiprocessing
import socket
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess

from ca_server.errors import ConfigError
from ca_server.worker import WorkerSpec, run_worker

log = logging.getLogger("ca_server")
WORKER_START_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 6.0
RESTART_BACKOFF_S = 1.0


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def bind_socket(host: str, port: int, *, option: int, what: str) -> socket.socket:
    """A TCP socket bound to host:port with `option` set; a ConfigError naming `what` if taken."""
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the {what} {host}:{port}: {exc.strerror}") from exc
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket so every worker can bind the same port."""
    return bind_socket(host, port, option=socket.SO_REUSEPORT, what="gRPC address")


@dataclass
class Supervisor:
    spec: WorkerSpec
    count: int
    workers: dict[int, BaseProcess] = field(default_factory=dict)
    starting: set[BaseProcess] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _spawn(self, index: int) -> BaseProcess:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=run_worker,
            args=(replace(self.spec, index=index), child),
            name=f"bulwark-ca-worker-{index}",
        )
        process.start()
        child.close()
        if not parent.poll(WORKER_START_TIMEOUT_S):
            process.kill()
            raise ConfigError(
                f"CA worker {index} did not start within {WORKER_START_TIMEOUT_S:.0f}s; see its log"
            )
        try:
            parent.recv()
        except EOFError as exc:
            raise ConfigError(
                f"CA worker {index} exited during start-up; see the log above"
            ) from exc
        return process

    async def start(self) -> None:
        async with self._lock:
            for index in range(self.count):
                self.workers[index] = await asyncio.to_thread(self._spawn, index)

    def readiness(self) -> tuple[bool, str]:
        dead = [i for i, p in self.workers.items() if not p.is_alive()]
        if dead or len(self.workers) < self.count:
            return False, f"worker(s) {dead} not running"
        return True, f"{len(self.workers)} worker(s) serving"

    async def watch(self) -> None:
        """Restart workers that die (a crash in one must not take the CA down)."""
        while True:
            await asyncio.sleep(RESTART_BACKOFF_S)
            async with self._lock:
                for index, process in list(self.workers.items()):
                    if process.is_alive():
                        continue
                    log.error(
                        "CA worker %d exited with code %s; restarting it", index, process.exitcode
                    )
                    _forget_metrics(process)
                    self.workers[index] = await asyncio.to_thread(self._spawn, index)

    async def roll(self, spec: WorkerSpec) -> None:
        """Replace every worker with one built from `spec`, one at a time, new before old."""
        async with self._lock:
            self.spec = spec
            for index, old in list(self.workers.items()):
                self.workers[index] = await asyncio.to_thread(self._spawn, index)
                await asyncio.to_thread(_stop, old)
                _forget_metrics(old)
            log.info("replaced %d worker(s) with the new CA material", len(self.workers))

    def stop(self) -> None:
        """Terminate every worker, including one a cancelled roll was still starting."""
        processes = [*self.workers.values(), *self.starting]
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            _stop(process)


def _stop(process: BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
    process.join(timeout=WORKER_STOP_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()


def _forget_metrics(process: BaseProcess) -> None:
    # Counters of a gone worker stay in the aggregate; only its live gauges are dropped.
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
