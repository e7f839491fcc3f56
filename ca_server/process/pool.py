"""The CA's worker processes: start, watch, restart, and hand them new CA material.

The pool knows nothing of what a worker runs: it is given the `target` each spawned
process calls, with the spec every worker shares, the current keys, the worker's index
and the worker's end of a pipe (uvicorn's `supervisors/multiprocess.py` is handed its
target the same way). Over that pipe a worker first sends anything to say it serves, then
answers every keys update with `KEYS_APPLIED` or the reason it could not apply them.

Workers bind the same ports with SO_REUSEPORT. A material change is sent to the
running workers over their pipes and applied in place, so no listening socket
is closed (closing one would reset connections queued on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Generic, TypeVar

from ca_server.errors import ConfigError

log = logging.getLogger("ca_server")
WORKER_START_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 6.0
KEYS_APPLY_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = 1.0
KEYS_APPLIED = "applied"  # a worker's answer to new keys it now uses
Spec = TypeVar("Spec")
Keys = TypeVar("Keys")


@dataclass(frozen=True, slots=True)
class Worker:
    process: BaseProcess
    pipe: Connection  # the supervisor's end: keys go out, acknowledgements come back


@dataclass
class WorkerPool(Generic[Spec, Keys]):
    """`count` processes each running `target(spec, keys, index, pipe)`; the three values
    must pickle (workers are spawned)."""

    target: Callable[[Spec, Keys, int, Connection], None]
    spec: Spec
    keys: Keys  # the latest: a worker (re)started now is given these
    count: int
    workers: dict[int, Worker] = field(default_factory=dict)
    starting: set[BaseProcess] = field(default_factory=set)  # spawned, not yet ready
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _spawn(self, index: int) -> Worker:
        ctx = multiprocessing.get_context("spawn")
        pipe, child = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=self.target,
            args=(self.spec, self.keys, index, child),
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

    async def update(self, keys: Keys) -> None:
        """Give every worker new keys; one that cannot take them is restarted with them."""
        async with self._lock:
            self.keys = keys
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


def _send_keys(worker: Worker, keys: object) -> str | None:
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
