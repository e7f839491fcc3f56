"""Group commit for an asyncio CA worker: one commit in flight, the next batch forming behind it.

`await record(entry)` queues the entry. When no commit is running the queue goes
at once to the record's own thread as one transaction, so an idle CA answers
with no added wait. Entries arriving meanwhile form the next batch. While the
recorder is loaded (its last commit carried several entries, or more were
waiting when it ended) a batch starts only after `linger_s` or once it is full,
so a busy worker commits fewer, larger batches. The event loop never
waits on the database, and there is one thread hand-off per transaction
instead of one per certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ca_server.ledger.errors import LedgerWriteError
from ca_server.ledger.recorder import ManagedRecorder
from ca_server.record import IssuedCertificate

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
        self._queue: list[tuple[IssuedCertificate, asyncio.Future[None]]] = []
        self._linger = linger_s
        self._lingering: asyncio.TimerHandle | None = None
        self._loaded = False  # the last commit had company: the next batch may linger
        self._idle = asyncio.Event()  # no batch is committing or lingering
        self._idle.set()
        self._closed = False

    async def record(self, entry: IssuedCertificate) -> None:
        if self._closed:
            raise LedgerWriteError("the issuance record is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((entry, done))
        if self._idle.is_set():
            self._next()
        elif self._lingering is not None and len(self._queue) >= self._max_batch:
            self._lingering.cancel()  # the batch is full: no reason to wait
            self._start()
        timer = loop.call_later(self._timeout, self._expire, entry, done)
        try:
            await done
        finally:
            timer.cancel()

    @staticmethod
    def _expire(entry: IssuedCertificate, done: asyncio.Future[None]) -> None:
        if not done.done():
            # Its batch may still commit later; the certificate is not sent either way.
            log.error("recording serial %s timed out", entry.serial)
            done.set_exception(LedgerWriteError())

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
            self._thread, self._writer.commit_batch, [entry for entry, _ in batch]
        )
        flight.add_done_callback(lambda finished: self._finish(batch, finished, started))

    def _finish(
        self,
        batch: list[tuple[IssuedCertificate, asyncio.Future[None]]],
        finished: asyncio.Future[list[BaseException | None]],
        started: float,
    ) -> None:
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started)
        try:
            errors = finished.result()
        except BaseException as exc:  # nobody may take an unfinished commit for success
            errors = [exc] * len(batch)
        for (_, done), error in zip(batch, errors, strict=True):
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(LedgerWriteError.of(error))
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
        await asyncio.to_thread(self._managed.close)
        self._thread.shutdown(wait=False)
        log.info("issuance record: %d rows in %d commits", self._writer.rows, self._writer.commits)
