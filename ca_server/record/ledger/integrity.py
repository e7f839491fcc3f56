"""Record integrity at start: a bounded check of the database and the chain's tail, and the anchor.

Before any worker starts, `guard_record` looks for damage:
- SQLite: the file is missing while the anchor says rows were recorded, or
  `PRAGMA quick_check` (bounded in time) finds it corrupt;
- the last `TAIL_ROWS` rows do not link up to the chain head;
- the record is behind the anchor (`<data-dir>/ca/record-anchor.json`: the head's
  seq and hash as last seen), or its row at the anchor's seq has another hash.
On damage it raises `RecordDamaged` (the CA exits 2 naming the file and
`bulwark certs verify-log`), unless the operator chose to continue: then a new
segment is recorded (`segments.py`), visible in `verify-log` and the admin API.

The anchor is rewritten by `AnchorKeeper` every `ANCHOR_INTERVAL` when the head
moved, and at shutdown, not after every commit: an fsync'd file write per commit
would double the record's fsync cost, and the anchor is a tripwire for a record
that was deleted, replaced or rolled back, not the proof of integrity (the chain
is). Rows committed in the last interval before a crash are simply ahead of the
anchor, which is not damage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ca_server.record.ledger.chain import verify_rows
from ca_server.record.ledger.database import (
    HEAD_SELECT,
    Head,
    RecordUrl,
    Session,
    default_record_url,
    head_from_row,
    parse_record_url,
)
from ca_server.record.ledger.dialects import connect, driver_errors
from ca_server.record.ledger.errors import LedgerError, RecordUrlError
from ca_server.record.ledger.rows import SELECT_COLUMNS, row_mapping
from ca_server.record.ledger.schema import ensure_schema
from ca_server.record.ledger.segments import Damage, latest_segment, start_segment

if TYPE_CHECKING:
    from ca_server.config import CaConfig

log = logging.getLogger(__name__)

ANCHOR_FILE = "record-anchor.json"
TAIL_ROWS = 1000  # rows of the chain's tail verified at start
QUICK_CHECK_BUDGET_S = 10.0  # longest SQLite's quick_check may run at start
ANCHOR_INTERVAL_S = 2.0
CONTINUE_FLAG = "--record-continue-after-damage"


class RecordDamaged(LedgerError):
    """The record is damaged or missing; the CA must not issue on top of it unasked."""


@dataclass(frozen=True, slots=True)
class Anchor:
    """The chain head as last seen: the record must reach at least this far, with this hash."""

    seq: int
    row_hash: str


def read_anchor(path: Path) -> Anchor | None:
    """The anchor at `path`, or None if there is none; an unreadable one is damage."""
    try:
        data = json.loads(path.read_text())
        return Anchor(seq=int(data["seq"]), row_hash=str(data["row_hash"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecordDamaged(
            f"the record anchor {path} is unreadable ({type(exc).__name__}); it holds the"
            " chain head the record must reach: restore it, or delete it to trust the record"
        ) from exc


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Replace the anchor atomically (0600, no fsync: see the module docstring)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"seq": anchor.seq, "row_hash": anchor.row_hash}, out)
    os.replace(tmp, path)


def _quick_check(path: str, budget_s: float) -> str | None:
    """SQLite's quick_check, interrupted after `budget_s`: what is wrong, or None."""
    conn = sqlite3.connect(path)  # quick_check only reads; read-only mode trips over WAL files
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            log.warning("record quick_check cut short after %.0f s; the tail is checked", budget_s)
            return None
        return f"SQLite cannot read it ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc})"
    finally:
        conn.close()
    problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
    return f"SQLite quick_check: {'; '.join(problems)[:300]}" if problems else None


def _tail_damage(session: Session, head: Head) -> str | None:
    """Whether the last TAIL_ROWS rows (from the latest segment at most) link to the head."""
    start_seq, start_hash = head.anchor_seq, head.anchor_hash
    segment = latest_segment(session)
    if segment is not None and segment.prev_seq > start_seq:
        start_seq, start_hash = segment.prev_seq, segment.prev_hash
    if head.seq - TAIL_ROWS > start_seq:
        start_seq = head.seq - TAIL_ROWS
        row = session.query_one("SELECT row_hash FROM certificates WHERE seq = ?", (start_seq,))
        if row is None:
            return f"row {start_seq} is missing"
        start_hash = str(row[0])
    rows = session.query(
        f"SELECT {SELECT_COLUMNS} FROM certificates WHERE seq > ? ORDER BY seq", (start_seq,)
    )
    report = verify_rows(
        (row_mapping(r) for r in rows),
        anchor_seq=start_seq,
        anchor_hash=start_hash,
        head_seq=head.seq,
        head_hash=head.row_hash,
    )
    if report.broken is None:
        return None
    where = f"row {report.broken.seq}" if report.broken.serial else "the chain's end"
    return f"hash chain broken at {where}: {report.broken.reason}"


def _anchor_damage(session: Session, head: Head, anchor: Anchor | None, path: Path) -> str | None:
    if anchor is None or anchor.seq < head.anchor_seq:
        return None  # no anchor yet, or it points into the pruned prefix
    if head.seq < anchor.seq:
        return (
            f"it ends at seq {head.seq} but {path} says seq {anchor.seq} was recorded"
            " (rows lost, or an older copy restored)"
        )
    if anchor.seq == head.anchor_seq:
        found: str | None = head.anchor_hash
    else:
        row = session.query_one("SELECT row_hash FROM certificates WHERE seq = ?", (anchor.seq,))
        found = str(row[0]) if row is not None else None
    if found != anchor.row_hash:
        return f"its row {anchor.seq} is not the one {path} recorded (record replaced)"
    return None


def _chain_damage(url: RecordUrl, anchor: Anchor | None, anchor_path: Path) -> Damage | None:
    session = connect(url)
    try:
        ensure_schema(session)  # an older record gains the segments table first
        session.begin_snapshot()
        head = _head(session)
        if head.seq == 0 and head.anchor_seq == 0:  # a new database: nothing recorded yet
            if anchor is not None and anchor.seq > 0:
                return Damage(
                    reason=f"it is empty but {anchor_path} says seq {anchor.seq} was recorded",
                    file_lost=True,
                )
            return None
        reason = _tail_damage(session, head) or _anchor_damage(session, head, anchor, anchor_path)
        return Damage(reason=reason, file_lost=False) if reason else None
    finally:
        session.rollback()
        session.close()


def _head(session: Session) -> Head:
    return head_from_row(session.query_one(HEAD_SELECT))


def find_damage(url: RecordUrl, anchor: Anchor | None, anchor_path: Path) -> Damage | None:
    """What is wrong with the record at `url` (bounded work), or None."""
    if url.dialect == "sqlite" and url.target != ":memory:":
        path = Path(url.target)
        if not path.exists() or path.stat().st_size == 0:
            if anchor is not None and anchor.seq > 0:
                return Damage(
                    reason=f"it is missing but {anchor_path} says seq {anchor.seq} was recorded",
                    file_lost=True,
                )
            return None
        problem = _quick_check(str(path), QUICK_CHECK_BUDGET_S)
        if problem is not None:
            return Damage(reason=problem, file_lost=True)
    try:
        return _chain_damage(url, anchor, anchor_path)
    except driver_errors(url) as exc:
        if url.dialect == "postgresql":
            return None  # unreachable: the record check that follows says so
        return Damage(reason=f"SQLite cannot read it ({exc})", file_lost=True)


def guard_record(
    url: str, anchor_path: Path, *, continue_after_damage: bool = False
) -> AnchorKeeper:
    """Check the record before the CA issues; start keeping its anchor current.

    Raises `RecordDamaged` on damage unless `continue_after_damage`, which records a new
    segment (and, for an unreadable SQLite file, moves it aside) and carries on.
    """
    parsed = parse_record_url(url)
    anchor = read_anchor(anchor_path)
    damage = find_damage(parsed, anchor, anchor_path)
    if damage is not None:
        where = parsed.redacted()
        if not continue_after_damage:
            raise RecordDamaged(
                f"the issuance record {where} is damaged: {damage.reason}. Inspect it with"
                f" `bulwark certs verify-log --record {where}`; to keep issuing on a new,"
                f" explicitly anchored segment (the break stays recorded), restart with"
                f" {CONTINUE_FLAG}"
            )
        kept = start_segment(parsed, damage, anchor, now=datetime.now(UTC))
        log.warning(
            "issuance record %s is damaged (%s); continuing on a new segment as %s asks%s",
            where,
            damage.reason,
            CONTINUE_FLAG,
            f"; the damaged file is kept as {kept}" if kept else "",
        )
    return AnchorKeeper(parsed, anchor_path).start()


def guard_record_of(config: CaConfig) -> AnchorKeeper | NoAnchor:
    """`guard_record` for a CA's configuration (anchor beside the CA key in the data dir).

    A record URL that does not parse is left to the record check that follows.
    """
    url = config.record or default_record_url(config.data_dir)
    try:
        parse_record_url(url)
    except RecordUrlError:
        return NoAnchor()
    return guard_record(
        url,
        config.data_dir / "ca" / ANCHOR_FILE,
        continue_after_damage=config.record_continue_after_damage,
    )


class NoAnchor:
    """No anchor kept (the record URL is unusable and the CA will not start)."""

    def stop(self) -> None:
        return None


class AnchorKeeper:
    """Rewrites the anchor when the chain head moved, every ANCHOR_INTERVAL_S and at stop."""

    def __init__(self, url: RecordUrl, path: Path, interval_s: float = ANCHOR_INTERVAL_S) -> None:
        self._url = url
        self._path = path
        self._interval = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="record-anchor", daemon=True)
        self._last: Anchor | None = None
        self._errors: tuple[type[Exception], ...] = (LedgerError, OSError, *driver_errors(url))

    def start(self) -> AnchorKeeper:
        self._thread.start()
        return self

    def update(self) -> None:
        """Write the anchor now if the head moved; a failure is logged and retried later."""
        try:
            session = connect(self._url)
            try:
                head = _head(session)
            finally:
                session.close()
            current = Anchor(seq=head.seq, row_hash=head.row_hash)
            if current != self._last:
                write_anchor(self._path, current)
                self._last = current
        except self._errors as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("record anchor %s not updated: %s", self._path, reason)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.update()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout=self._interval + 5)
        self.update()
