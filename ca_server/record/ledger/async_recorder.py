"""Group commit for an asyncio CA worker: one commit in flight, the next batch forming behind it.

`await record(entry)` queues the entry. When no commit is running the queue goes
at once to the record's own thread as one transaction, so an idle CA answers
with no added wait. Entries arriving meanwhile form the next batch. While the
recorder is loaded (its last commit carried several entries, or more were
waiting when it ended) a batch starts only after `linger_s` or once it is full,
so a busy worker commits fewer, larger batches. The event loop never
waits on the database, and there is one thread hand-off per transaction
instead of one per certificate. `record_many` queues one call's entries as a unit that
always lands in one commit (a batch never splits it). Write timeouts share one timer too: it
is armed for the oldest waiting unit's deadline and, when it fires, fails whatever is overdue
and re-arms for the next (issue #18: no timer per certificate). Each unit's deadline (the
write timeout, or sooner the caller's own gRPC deadline) also goes to the writer, which
leaves out an entry whose caller stopped waiting while the chain lock was taken elsewhere:
a stalled replica that thaws does not record certificates nobody received.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.errors import LedgerWriteError
from ca_server.record.ledger.recorder import ManagedRecorder

log = logging.getLogger(__name__)


Answer = asyncio.Future[list[BaseException | None]]


class _Unit:
    """Entries that go into one commit together (one call's), and their callers' answer:
    per entry, None once committed or why it was not."""

    __slots__ = ("deadline", "done", "entries")

    def __init__(self, entries: list[IssuedCertificate], done: Answer, deadline: float) -> None:
        self.entries = entries
        self.done = done
        self.deadline = deadline  # `time.monotonic()`: the writer leaves it out after this


class AsyncRecorder:
    """`await record(entry)` returns once `entry` is durably committed, or raises
    `LedgerWriteError`; `await record_many(entries)` commits them in one batch and says per
    entry whether it was committed. Use it from one event loop."""

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
        self._queue: list[_Unit] = []
        self._queued = 0  # entries in `_queue`
        # every unit not yet answered, oldest first, with its deadline (loop time)
        self._waiting: deque[tuple[float, _Unit]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._linger = linger_s
        self._lingering: asyncio.TimerHandle | None = None
        self._loaded = False  # the last commit had company: the next batch may linger
        self._idle = asyncio.Event()  # no batch is committing or lingering
        self._idle.set()
        self._closed = False

    async def record(self, entry: IssuedCertificate, *, within: float | None = None) -> None:
        """`within`: seconds the caller still waits (its gRPC deadline), if it has one."""
        (error,) = await self._submit([entry], within)
        if error is not None:
            raise LedgerWriteError.of(error)

    async def record_many(
        self, entries: Sequence[IssuedCertificate], *, within: float | None = None
    ) -> list[LedgerWriteError | None]:
        """Commit `entries` in one batch (never split across commits; one by one only if the
        batch's transaction fails); per entry, None once committed or why it was not."""
        if not entries:
            return []
        try:
            errors = await self._submit(list(entries), within)
        except LedgerWriteError as exc:  # closed, or timed out: none of them counts as committed
            return [exc] * len(entries)
        return [None if error is None else LedgerWriteError.of(error) for error in errors]

    async def _submit(
        self, entries: list[IssuedCertificate], within: float | None
    ) -> list[BaseException | None]:
        if self._closed:
            raise LedgerWriteError("the issuance record is closed")
        loop = asyncio.get_running_loop()
        wait = self._timeout if within is None else max(0.0, min(self._timeout, within))
        unit = _Unit(entries, loop.create_future(), time.monotonic() + wait)
        self._queue.append(unit)
        self._queued += len(entries)
        deadline = loop.time() + wait
        self._waiting.append((deadline, unit))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._expire_overdue)
        if self._idle.is_set():
            self._next()
        elif self._lingering is not None and self._queued >= self._max_batch:
            self._lingering.cancel()  # the batch is full: no reason to wait
            self._start()
        return await unit.done

    def _expire_overdue(self) -> None:
        """The one write-timeout timer: fail every unit past its deadline, re-arm for the next."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        while waiting and (waiting[0][1].done.done() or waiting[0][0] <= now):
            _, unit = waiting.popleft()
            if not unit.done.done():
                # Its batch may still commit later; the certificates are not sent either way.
                log.error(
                    "recording serial %s%s timed out",
                    unit.entries[0].serial,
                    f" and {len(unit.entries) - 1} more" if len(unit.entries) > 1 else "",
                )
                unit.done.set_exception(LedgerWriteError())
        self._watchdog = loop.call_at(waiting[0][0], self._expire_overdue) if waiting else None

    def _start(self) -> None:
        self._lingering = None
        # A caller that timed out or was cancelled before its batch started is not recorded.
        units = [unit for unit in self._queue if not unit.done.done()]
        batch: list[_Unit] = []
        size = 0
        for unit in units:  # whole units, at most max_batch entries unless one unit is larger
            if batch and size + len(unit.entries) > self._max_batch:
                break
            batch.append(unit)
            size += len(unit.entries)
        self._queue = units[len(batch) :]
        self._queued = sum(len(unit.entries) for unit in self._queue)
        if not batch:
            self._idle.set()
            return
        self._idle.clear()
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        entries = [entry for unit in batch for entry in unit.entries]
        deadlines = [unit.deadline for unit in batch for _ in unit.entries]
        flight = loop.run_in_executor(self._thread, self._writer.commit_batch, entries, deadlines)
        flight.add_done_callback(lambda finished: self._finish(batch, finished, started))

    def _finish(
        self,
        batch: list[_Unit],
        finished: asyncio.Future[list[BaseException | None]],
        started: float,
    ) -> None:
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started)
        size = sum(len(unit.entries) for unit in batch)
        try:
            errors = finished.result()
        except BaseException as exc:  # nobody may take an unfinished commit for success
            errors = [exc] * size
        at = 0
        for unit in batch:
            mine, at = errors[at : at + len(unit.entries)], at + len(unit.entries)
            if not unit.done.done():
                unit.done.set_result(mine)
        waiting = self._waiting
        while waiting and waiting[0][1].done.done():  # answered: the timer needs them no more
            waiting.popleft()
        self._loaded = size > 1 or bool(self._queue)
        self._next()

    def _next(self) -> None:
        """Start the next batch now, after the linger (a loaded recorder whose batch has room),
        or, with nothing queued, go idle."""
        if not self._queue:
            self._idle.set()
        elif self._loaded and self._linger and self._queued < self._max_batch and not self._closed:
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
