"""The write side: a `Recorder` whose callers group-commit for each other.

`record()` may be called from many threads at once. Each call queues its entry;
the caller that finds nobody committing becomes the leader and, in its own
thread, appends everything pending (up to `max_batch`) to the chain in one
transaction, then wakes every caller of that batch when it commits, or raises
in each one whose entry failed. One fsync thus serves many certificates, with
no writer thread to hand each entry to. `max_batch=1` turns grouping off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
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
    """One caller's entry; `wake` is set when its outcome is known or it is made leader."""

    __slots__ = ("entry", "error", "finished", "lead", "wake")

    def __init__(self, entry: IssuedCertificate) -> None:
        self.entry = entry
        self.wake = threading.Event()
        self.error: BaseException | None = None
        self.finished = False  # committed, or failed with `error`
        self.lead = False  # this caller commits what is queued (set under the recorder's lock)


class GroupCommitRecorder:
    """A `Recorder` over one database whose callers take turns committing for each other.

    Leader/follower group commit: a caller that finds nobody committing becomes the
    leader and commits everything queued (its own entry first) in one transaction;
    callers arriving meanwhile queue and wait. When the leader's commit ends it makes
    the oldest waiting caller the next leader, then wakes the callers it committed for.
    No thread hand-off is needed when calls do not overlap, and one session is used by
    one leader at a time. Waiting callers give up after `write_timeout`; a leader waits
    as long as the database call it is in, which each backend bounds (SQLite's busy
    timeout, PostgreSQL's statement_timeout: 30 s each).
    """

    def __init__(self, url: RecordUrl, *, options: RecorderOptions) -> None:
        self._url = url
        self._options = options
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when leadership is given up
        self._queue: deque[_Pending] = deque()  # waiting, not yet taken into a batch
        self._leading = False  # a caller is committing, or has been made leader
        self._closed = False
        self._session: Session | None = None
        self._errors: tuple[type[Exception], ...] = (LedgerError, OSError, *driver_errors(url))
        self.commits = 0  # transactions committed, for measurements
        self.rows = 0  # certificates committed

    @property
    def leading(self) -> bool:
        """Whether a caller is committing (or has been made leader), for tests and measurements."""
        return self._leading

    @property
    def queued(self) -> int:
        """Callers waiting for a leader to take their entry, for tests and measurements."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def record(self, entry: IssuedCertificate) -> None:
        """Commit `entry` durably, grouped with concurrent calls; raise `LedgerWriteError`."""
        pending = _Pending(entry)
        with self._lock:
            if self._closed:
                raise LedgerWriteError("the issuance record is closed")
            self._queue.append(pending)
            if not self._leading:
                self._leading = pending.lead = True
        if not pending.lead:
            self._follow(pending)
        if pending.lead:
            self._lead()
        if pending.error is not None:
            if isinstance(pending.error, LedgerWriteError):
                raise pending.error
            raise LedgerWriteError() from pending.error

    def commit_batch(self, entries: list[IssuedCertificate]) -> list[BaseException | None]:
        """Commit `entries` in one transaction (one by one if it fails) and say, per entry,
        why it was not committed (None: committed). For a caller that batches on its own
        (`AsyncRecorder`): it must not overlap with `record()` calls or another batch."""
        batch = [_Pending(entry) for entry in entries]
        with self._lock:
            if self._closed:
                raise LedgerWriteError("the issuance record is closed")
            if self._leading:
                raise RuntimeError("commit_batch() overlaps another commit")
            self._leading = True
        try:
            self._commit_guarded(batch)
        finally:
            with self._lock:
                self._leading = False
                self._idle.notify_all()
        return [pending.error for pending in batch]

    def close(self) -> None:
        """Commit what is queued (callers already waiting succeed), then release the session."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timeout = self._options.write_timeout.total_seconds()
            if not self._idle.wait_for(lambda: not self._leading, timeout):
                return  # a leader is stuck in the database; it still owns the session
        self._drop_session()

    def _follow(self, pending: _Pending) -> None:
        """Wait until a leader has committed `pending` or made its caller the leader."""
        if pending.wake.wait(self._options.write_timeout.total_seconds()):
            return
        with self._lock:
            if pending.lead or pending.finished:
                return
            # Not taken yet: it will never be written. Already in a batch being committed:
            # the row may still appear, but the certificate is not sent.
            with contextlib.suppress(ValueError):
                self._queue.remove(pending)
        log.error("recording serial %s timed out", pending.entry.serial)
        raise LedgerWriteError()

    def _lead(self) -> None:
        """Commit one batch from the head of the queue, then pass leadership on or give it up."""
        batch: list[_Pending] = []
        try:
            with self._lock:
                while self._queue and len(batch) < self._options.max_batch:
                    batch.append(self._queue.popleft())
            self._commit_guarded(batch)
        except BaseException as exc:  # e.g. KeyboardInterrupt: nobody may take it for success
            for pending in batch:
                pending.error = pending.error or exc
            raise
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._leading = False
                    self._idle.notify_all()
            for pending in batch:
                pending.lead = False
                pending.finished = True
                pending.wake.set()

    def _commit_guarded(self, batch: list[_Pending]) -> None:
        try:
            self._commit(batch)
        except Exception as exc:  # a bug, not a database error: fail these callers, keep going
            log.exception("issuance record writer failed")
            self._drop_session()
            for pending in batch:
                if pending.error is None:
                    pending.error = exc

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
