"""The read side: listing, lookup by serial and chain verification, safe across threads."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from ca_server.record.ledger.chain import SegmentBreak, VerifyReport, verify_rows
from ca_server.record.ledger.database import HEAD_SELECT, RecordUrl, Session, head_from_row
from ca_server.record.ledger.dialects import connect, driver_errors
from ca_server.record.ledger.errors import LedgerReadError
from ca_server.record.ledger.query import CertificateQuery, normalise_serial
from ca_server.record.ledger.recorder import prepare, utc_now
from ca_server.record.ledger.rows import (
    SELECT_COLUMNS,
    StoredCertificate,
    row_mapping,
    stored_from_row,
)
from ca_server.record.ledger.segments import list_segments

T = TypeVar("T")
VERIFY_CHUNK = 2000
POOL_SIZE = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificatePage:
    items: list[StoredCertificate]
    next_cursor: str | None


class LedgerReader:
    """Queries against the record; keeps a few idle sessions for reuse."""

    def __init__(self, url: RecordUrl, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._url = url
        self._clock = clock
        self._errors = driver_errors(url)
        self._idle: queue.LifoQueue[Session] = queue.LifoQueue(maxsize=POOL_SIZE)

    def _connect(self) -> Session:
        try:
            return connect(self._url)
        except self._errors as exc:
            raise LedgerReadError(f"cannot open the record at {self._url.redacted()}") from exc

    def _run(self, work: Callable[[Session], T]) -> T:
        """Run `work` on a pooled session; a stale pooled connection is replaced once."""
        try:
            session, reused = self._idle.get_nowait(), True
        except queue.Empty:
            session, reused = self._connect(), False
        while True:
            try:
                result = work(session)
                break
            except self._errors as exc:
                session.close()
                if not reused:
                    raise LedgerReadError("reading the issuance record failed") from exc
                session, reused = self._connect(), False  # database restarted since last use
            except BaseException:
                session.close()
                raise
        session.rollback()
        try:
            self._idle.put_nowait(session)
        except queue.Full:
            session.close()
        return result

    def list(self, query: CertificateQuery) -> CertificatePage:
        """One page of certificates matching `query`, newest first."""
        where, params = query.where(self._clock())
        sql = f"SELECT {SELECT_COLUMNS} FROM certificates{where} ORDER BY seq DESC LIMIT ?"
        rows = self._run(lambda session: session.query(sql, [*params, query.limit + 1]))
        items = [stored_from_row(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return CertificatePage(
            items=items, next_cursor=query.cursor_after(items[-1].seq) if more else None
        )

    def get(self, serial: str) -> StoredCertificate | None:
        """The certificate with `serial` (hex, any case, colons allowed), or None."""
        key = normalise_serial(serial)
        sql = f"SELECT {SELECT_COLUMNS} FROM certificates WHERE serial = ?"
        row = self._run(lambda session: session.query_one(sql, (key,)))
        return stored_from_row(row) if row is not None else None

    def verify(self) -> VerifyReport:
        """Recompute the hash chain over one consistent snapshot of the record."""
        return self._run(self._verify)

    def _verify(self, session: Session) -> VerifyReport:
        session.begin_snapshot()
        head = head_from_row(session.query_one(HEAD_SELECT))
        start_seq, start_hash, checked = head.anchor_seq, head.anchor_hash, 0
        breaks: list[SegmentBreak] = []
        for segment in list_segments(session):
            if segment.prev_seq < start_seq:  # its stretch was pruned
                continue
            before = verify_rows(
                self._chunks(session, start_seq, segment.prev_seq),
                anchor_seq=start_seq,
                anchor_hash=start_hash,
                head_seq=segment.prev_seq,
                head_hash=segment.prev_hash,
            )
            checked += before.rows_checked
            breaks.append(
                SegmentBreak(
                    first_seq=segment.first_seq,
                    prev_seq=segment.prev_seq,
                    reason=segment.reason,
                    started_at=segment.started_at.isoformat(),
                    damage=before.broken,
                )
            )
            start_seq, start_hash = segment.prev_seq, segment.prev_hash
        last = verify_rows(
            self._chunks(session, start_seq, head.seq),
            anchor_seq=start_seq,
            anchor_hash=start_hash,
            head_seq=head.seq,
            head_hash=head.row_hash,
        )
        return replace(
            last,
            rows_checked=checked + last.rows_checked,
            anchor_seq=head.anchor_seq,
            segments=tuple(breaks),
        )

    @staticmethod
    def _chunks(session: Session, after: int, until: int) -> Iterator[dict[str, Any]]:
        while True:
            rows = session.query(
                f"SELECT {SELECT_COLUMNS} FROM certificates WHERE seq > ? AND seq <= ?"
                " ORDER BY seq LIMIT ?",
                (after, until, VERIFY_CHUNK),
            )
            for row in rows:
                yield row_mapping(row)
            if len(rows) < VERIFY_CHUNK:
                return
            after = int(rows[-1][0])

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def open_reader(url: str, *, clock: Callable[[], datetime] = utc_now) -> LedgerReader:
    """Open the record at `url` for queries (creating the schema if it is new)."""
    return LedgerReader(prepare(url), clock=clock)
