"""The write side: `RecordWriter` appends batches of certificates to the chain.

A batch is one transaction and one fsync. If it fails because of its data (a
duplicate serial), its entries are retried one by one, so a bad entry fails only
itself; if the database failed, the whole batch fails at once. The CA's workers
batch through `AsyncRecorder` (async_recorder.py), which hands `commit_batch` one
batch at a time on its own thread, with each entry's deadline; tools and tests may
call `record()` from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ca_server.options import default
from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.append import append_batch
from ca_server.record.ledger.database import RecordUrl, Session, parse_record_url
from ca_server.record.ledger.dialects import connect, driver_errors, entry_errors
from ca_server.record.ledger.errors import LedgerError, LedgerWriteError
from ca_server.record.ledger.retention import Pruner
from ca_server.record.ledger.schema import ensure_schema

log = logging.getLogger(__name__)

DEFAULT_WRITE_TIMEOUT = timedelta(seconds=30)
# A batch that failed on a kept session this soon is retried once on a new one: the session
# had gone stale (database restarted). One that failed later (a lock wait, a stall of this
# process) is not: its callers may have stopped waiting, and the database is the problem.
STALE_SESSION_FAILS_WITHIN_S = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderOptions:
    """How the recorder groups commits and whether it prunes."""

    max_batch: int = default("record_max_batch")  # entries per commit; 1: no group commit
    write_timeout: timedelta = DEFAULT_WRITE_TIMEOUT  # how long a caller waits for its commit
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
    """One entry of a batch, when its caller stops waiting (`time.monotonic()`), and, once it
    is known, why it was not committed."""

    __slots__ = ("deadline", "entry", "error")

    def __init__(self, entry: IssuedCertificate, deadline: float | None) -> None:
        self.entry = entry
        self.deadline = deadline
        self.error: BaseException | None = None


class CallerGone(LedgerWriteError):
    """The entry's caller stopped waiting before the chain lock was free: not recorded."""


class RecordWriter:
    """Appends certificates to the chain through one database session, one batch at a time.

    A stale session (database restarted, failover) is replaced once per batch, when it
    fails at once. Each database call is bounded by the backend (SQLite's busy timeout,
    PostgreSQL's statement_timeout: 30 s each; on PostgreSQL the chain-lock wait and how
    long a stalled holder keeps it are bounded too, see postgres.py).
    """

    def __init__(self, url: RecordUrl, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._url = url
        self._clock = clock
        self._lock = threading.Lock()  # one batch at a time on the session
        self._busy = False
        self._closed = False
        self._session: Session | None = None
        self._errors: tuple[type[Exception], ...] = (LedgerError, OSError, *driver_errors(url))
        self._entry_errors = entry_errors(url)
        self.commits = 0  # transactions committed, for measurements
        self.rows = 0  # certificates committed

    @property
    def busy(self) -> bool:
        """Whether a batch is being committed, for tests and measurements."""
        return self._busy

    def connect(self) -> None:
        """Open the session now, not at the first batch: a CA worker does before it serves,
        so a burst of connections using up its file descriptors cannot keep it from writing."""
        with self._lock:
            if self._session is None:
                self._session = connect(self._url)

    def record(self, entry: IssuedCertificate) -> None:
        """Commit `entry` durably on its own, or raise `LedgerWriteError`."""
        (error,) = self.commit_batch([entry])
        if error is not None:
            raise LedgerWriteError.of(error)

    def commit_batch(
        self, entries: list[IssuedCertificate], deadlines: Sequence[float | None] = ()
    ) -> list[BaseException | None]:
        """Commit `entries` in one transaction (one by one if their data fails it); say per
        entry why it was not committed (None: committed). An entry whose deadline (in
        `time.monotonic()` seconds) has passed once the chain lock is held is left out.
        Calls from several threads take turns."""
        batch = [
            _Pending(entry, deadlines[i] if i < len(deadlines) else None)
            for i, entry in enumerate(entries)
        ]
        with self._lock:
            if self._closed:
                raise LedgerWriteError("the issuance record is closed")
            self._busy = True
            try:
                self._commit_guarded(batch)
            finally:
                self._busy = False
        return [pending.error for pending in batch]

    def close(self) -> None:
        """Release the session once the batch being committed (if any) is done."""
        with self._lock:
            self._closed = True
            self._drop_session()

    def _commit_guarded(self, batch: list[_Pending]) -> None:
        try:
            self._commit(batch)
        except Exception as exc:  # a bug, not a database error: fail these entries, keep going
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
            waiting = [p for p in batch if p.error is None]
            if len(waiting) > 1 and isinstance(exc, self._entry_errors):
                # Retry one by one, so a single bad entry fails only its own caller.
                for pending in waiting:
                    self._commit([pending])
                return
            serials = ", ".join(p.entry.serial for p in waiting[:3])
            more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
            log.error("recording serial %s%s failed: %s", serials, more, _one_line(exc))
            for pending in waiting:
                pending.error = exc

    def _write(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        if self._session is not None:
            try:
                self._append(batch)
                return
            except self._errors:
                # The connection may have gone stale (database restarted, failover): try once
                # more on a fresh one, unless the batch waited or stalled first. A row
                # committed just before the error cannot be written twice: serials are unique.
                self._drop_session()
                if time.monotonic() - started > STALE_SESSION_FAILS_WITHIN_S:
                    raise
        self._session = connect(self._url)
        self._append(batch)

    def _append(self, batch: list[_Pending]) -> None:
        assert self._session is not None
        waiting = [p for p in batch if p.error is None]

        def admit(entries: Sequence[IssuedCertificate]) -> list[IssuedCertificate]:
            now = time.monotonic()
            gone = [p for p in waiting if p.deadline is not None and now >= p.deadline]
            for pending in gone:
                pending.error = CallerGone("the caller stopped waiting before it was recorded")
            if gone:
                log.warning(
                    "%d certificate(s) not recorded (nor sent): their callers stopped waiting "
                    "before the record's chain lock was free",
                    len(gone),
                )
            return [p.entry for p in waiting if p.error is None]

        seqs = append_batch(
            self._session, [p.entry for p in waiting], recorded_at=self._clock(), admit=admit
        )
        self.commits += 1 if seqs else 0
        self.rows += len(seqs)

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class ManagedRecorder:
    """What `open_recorder` returns: the writer plus optional background pruning."""

    def __init__(
        self, writer: RecordWriter, options: RecorderOptions, pruner: Pruner | None
    ) -> None:
        self.writer = writer
        self.options = options
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
    writer = RecordWriter(parsed, clock=options.clock)
    writer.connect()
    return ManagedRecorder(writer, options, pruner)
