"""The write side: a `Recorder` whose single writer thread group-commits concurrent calls.

`record()` may be called from many threads at once. Each call queues its entry
and waits; one writer thread per process takes everything pending (up to
`max_batch`), appends it to the chain in one transaction, and wakes every
caller when that transaction commits, or raises in each of them if it fails.
One fsync thus serves many certificates. `max_batch=1` turns grouping off.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ca_server.ledger.append import append_batch
from ca_server.ledger.database import (
    RecordUrl,
    Session,
    connect,
    driver_errors,
    parse_record_url,
)
from ca_server.ledger.errors import LedgerError, LedgerWriteError
from ca_server.ledger.retention import Pruner
from ca_server.ledger.schema import ensure_schema
from ca_server.record import IssuedCertificate

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 256
DEFAULT_WRITE_TIMEOUT = timedelta(seconds=30)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderOptions:
    """How the recorder groups commits and whether it prunes."""

    max_batch: int = DEFAULT_MAX_BATCH  # 1 turns group commit off
    write_timeout: timedelta = DEFAULT_WRITE_TIMEOUT
    retention: timedelta | None = None  # prune rows expired longer than this; None keeps all
    prune_interval: timedelta = timedelta(minutes=10)
    prune_batch: int = 1000
    clock: Callable[[], datetime] = field(default=utc_now)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.write_timeout <= timedelta(0):
            raise ValueError("write_timeout must be positive")
        if self.retention is not None and self.retention < timedelta(0):
            raise ValueError("retention must not be negative")
        if self.prune_batch < 1 or self.prune_interval <= timedelta(0):
            raise ValueError("prune_batch and prune_interval must be positive")


class _Pending:
    __slots__ = ("done", "entry", "error")

    def __init__(self, entry: IssuedCertificate) -> None:
        self.entry = entry
        self.done = threading.Event()
        self.error: BaseException | None = None


_STOP = object()


class GroupCommitRecorder:
    """A `Recorder` over one database with a single group-committing writer thread."""

    def __init__(self, url: RecordUrl, *, options: RecorderOptions) -> None:
        self._url = url
        self._options = options
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._session: Session | None = None
        self._errors: tuple[type[Exception], ...] = (LedgerError, OSError, *driver_errors(url))
        self.commits = 0  # transactions committed, for measurements
        self.rows = 0  # certificates committed
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def record(self, entry: IssuedCertificate) -> None:
        """Commit `entry` durably, grouped with concurrent calls; raise `LedgerWriteError`."""
        if self._closed.is_set():
            raise LedgerWriteError("the issuance record is closed")
        pending = _Pending(entry)
        self._queue.put(pending)
        if not pending.done.wait(self._options.write_timeout.total_seconds()):
            log.error("recording serial %s timed out", entry.serial)
            raise LedgerWriteError()
        if pending.error is not None:
            if isinstance(pending.error, LedgerWriteError):
                raise pending.error
            raise LedgerWriteError() from pending.error

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(_STOP)
            self._thread.join(timeout=self._options.write_timeout.total_seconds())

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._options.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            pending = [p for p in batch if isinstance(p, _Pending)]
            try:
                self._commit(pending)
            except Exception as exc:  # a bug, not a database error: fail the callers, keep going
                log.exception("issuance record writer failed")
                self._drop_session()
                for item in pending:
                    if not item.done.is_set():
                        item.error = exc
                        item.done.set()
        self._drop_session()
        self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Callers that queued while the recorder was closing get an error, not a timeout."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Pending):
                item.error = LedgerWriteError("the issuance record is closed")
                item.done.set()

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self._write(batch)
        except self._errors as exc:
            self._drop_session()
            if len(batch) > 1:
                # Retry one by one, so a single bad entry fails only its own caller.
                for pending in batch:
                    self._commit([pending])
                return
            log.error("recording serial %s failed: %s", batch[0].entry.serial, exc)
            batch[0].error = exc
        for pending in batch:
            pending.done.set()

    def _write(self, batch: list[_Pending]) -> None:
        if self._session is not None:
            try:
                self._append(batch)
                return
            except self._errors:
                # The connection may have gone stale (database restarted, failover):
                # try once more on a fresh one. A row committed just before the error
                # cannot be written twice: serials are unique.
                self._drop_session()
        self._session = connect(self._url)
        self._append(batch)

    def _append(self, batch: list[_Pending]) -> None:
        assert self._session is not None
        append_batch(self._session, [p.entry for p in batch], recorded_at=self._options.clock())
        self.commits += 1
        self.rows += len(batch)

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


class ManagedRecorder:
    """The recorder `open_recorder` returns: group commit plus optional background pruning."""

    def __init__(self, recorder: GroupCommitRecorder, pruner: Pruner | None) -> None:
        self.writer = recorder
        self._pruner = pruner

    def record(self, entry: IssuedCertificate) -> None:
        self.writer.record(entry)

    def close(self) -> None:
        if self._pruner is not None:
            self._pruner.stop()
        self.writer.close()


def prepare(url: str) -> RecordUrl:
    """Parse `url` and create or migrate the schema there."""
    parsed = parse_record_url(url)
    session = connect(parsed)
    try:
        ensure_schema(session)
    finally:
        session.close()
    return parsed


def open_recorder(url: str, *, options: RecorderOptions | None = None) -> ManagedRecorder:
    """Open the issuance record at `url` (sqlite path/URL or postgresql:// DSN) for writing."""
    options = options or RecorderOptions()
    parsed = prepare(url)
    pruner = None
    if options.retention is not None:
        pruner = Pruner(
            parsed,
            max_age=options.retention,
            interval=options.prune_interval,
            batch_size=options.prune_batch,
            clock=options.clock,
        ).start()
    return ManagedRecorder(GroupCommitRecorder(parsed, options=options), pruner)
