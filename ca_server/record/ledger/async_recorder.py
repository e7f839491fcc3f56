"""Group commit for an asyncio CA worker: one commit in flight, the next batch forming behind it.

`await record(entry)` queues the entry. When no commit is running the queue goes
at once to the record's own thread as one transaction, so an idle CA answers
with no added wait. Entries arriving meanwhile form the next batch. While the
recorder is loaded (its last commit carried several entries, or more were
waiting when it ended) a batch starts only after `linger_s` or once it is full,
so a busy worker commits fewer, larger batches. The event loop never
waits on the database, and there is one thread hand-off per transaction
instead of one per certificate. Write timeouts share one timer too: it is armed for
the oldest waiting entry's deadline and, when it fires, fails whatever is overdue
and re-arms for the next (issue #18: no timer per certificate). Each entry's deadline (the
write timeout, or sooner the caller's own gRPC deadline) also goes to the writer, which
leaves out an entry whose caller stopped waiting while the chain lock was taken elsewhere:
a stalled replica that thaws does not record certificates nobody received.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.errors import LedgerWriteError
from ca_server.record.ledger.recorder import ManagedRecorder

log = logging.getLogger(__name__)


class AsyncRecorder:
    """`await record(entry)` returns once `entry` is durably committed, or raises
    `LedgerWriteError`; use it from one event loop."""

    def __init__(
        self,
        managed: ManagedRecorder,
        *,
        linger_s: float = 0.0,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        """`on_commit(seconds)` is told how long each batch's commit took."""
        self._managed = managed
        self._on_commit = on_commit
        self._writer = managed.writer
        self._max_batch = managed.options.max_batch
        self._timeout = managed.options.write_timeout.total_seconds()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
        # queued entries with their futures and deadlines (`time.monotonic()`, for the writer)
        self._queue: list[tuple[IssuedCertificate, asyncio.Future[None], float]] = []
        # every entry not yet answered, oldest first, with its deadline (loop time)
        self._waiting: deque[tuple[float, IssuedCertificate, asyncio.Future[None]]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._linger = linger_s
        self._lingering: asyncio.TimerHandle | None = None
        self._loaded = False  # the last commit had company: the next batch may linger
        self._idle = asyncio.Event()  # no batch is committing or lingering
        self._idle.set()
        self._closed = False

    async def record(self, entry: IssuedCertificate, *, within: float | None = None) -> None:
        """`within`: seconds the caller still waits (its gRPC deadline), if it has one."""
        if self._closed:
            raise LedgerWriteError("the issuance record is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        wait = self._timeout if within is None else max(0.0, min(self._timeout, within))
        self._queue.append((entry, done, time.monotonic() + wait))
        deadline = loop.time() + wait
        self._waiting.append((deadline, entry, done))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._expire_overdue)
        if self._idle.is_set():
            self._next()
        elif self._lingering is not None and len(self._queue) >= self._max_batch:
            self._lingering.cancel()  # the batch is full: no reason to wait
            self._start()
        await done

    def _expire_overdue(self) -> None:
        """The one write-timeout timer: fail every entry past its deadline, re-arm for the next."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        while waiting and (waiting[0][2].done() or waiting[0][0] <= now):
            _, entry, done = waiting.popleft()
            if not done.done():
                # Its batch may still commit later; the certificate is not sent either way.
                log.error("recording serial %s timed out", entry.serial)
                done.set_exception(LedgerWriteError())
        self._watchdog = loop.call_at(waiting[0][0], self._expire_overdue) if waiting else None

    def _start(self) -> None:
        self._lingering = None
        # A caller that timed out or was cancelled before its batch started is not recorded.
        waiting = [item for item in self._queue if not item[1].done()]
        batch, self._queue = waiting[: self._max_batch], waiting[self._max_batch :]
        if not batch:
            self._idle.set()
            return
        self._idle.clear()
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        flight = loop.run_in_executor(
            self._thread,
            self._writer.commit_batch,
            [entry for entry, _, _ in batch],
            [deadline for _, _, deadline in batch],
        )
        flight.add_done_callback(lambda finished: self._finish(batch, finished, started))

    def _finish(
        self,
        batch: list[tuple[IssuedCertificate, asyncio.Future[None], float]],
        finished: asyncio.Future[list[BaseException | None]],
        started: float,
    ) -> None:
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started)
        try:
            errors = finished.result()
        except BaseException as exc:  # nobody may take an unfinished commit for success
            errors = [exc] * len(batch)
        for (_, done, _), error in zip(batch, errors, strict=True):
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(LedgerWriteError.of(error))
        waiting = self._waiting
        while waiting and waiting[0][2].done():  # answered: the timer needs them no more
            waiting.popleft()
        self._loaded = len(batch) > 1 or bool(self._queue)
        self._next()

    def _next(self) -> None:
        """Start the next batch now, after the linger (a loaded recorder whose batch has room),
        or, with nothing queued, go idle."""
        if not self._queue:
            self._idle.set()
        elif (
            self._loaded
            and self._linger
            and len(self._queue) < self._max_batch
            and not self._closed
        ):
            self._idle.clear()
            self._lingering = asyncio.get_running_loop().call_later(self._linger, self._start)
        else:
            self._start()

    async def close(self) -> None:
        """Commit what is queued (its callers succeed), then release the database session."""
        self._closed = True
        if self._lingering is not None:
            self._lingering.cancel()
            self._start()
        await self._idle.wait()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await asyncio.to_thread(self._managed.close)
        self._thread.shutdown(wait=False)
        log.info("issuance record: %d rows in %d commits", self._writer.rows, self._writer.commits)
