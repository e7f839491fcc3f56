"""Segments: where an operator chose to continue the record after damage, kept for ever.

A segment row says: rows from `first_seq` chain from `(prev_seq, prev_hash)`,
whatever came before, for `reason`. Verification checks each stretch of the
chain up to its segment separately, so the damage before a segment is reported
(as acknowledged) while the rows after it are still proved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ca_server.record.ledger.chain import GENESIS_HASH
from ca_server.record.ledger.database import RecordUrl, Session
from ca_server.record.ledger.dialects import connect
from ca_server.record.ledger.schema import ensure_schema

if TYPE_CHECKING:
    from ca_server.record.ledger.integrity import Anchor

SEGMENT_SELECT = (
    "SELECT id, first_seq, prev_seq, prev_hash, reason, started_at_us FROM record_segments"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Damage:
    """What is wrong with a record; `file_lost` when its database cannot be used at all."""

    reason: str
    file_lost: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A new start of the chain, recorded when the CA continued after damage."""

    id: int
    first_seq: int
    prev_seq: int
    prev_hash: str
    reason: str
    started_at: datetime


def _segment(row: tuple[object, ...]) -> Segment:
    us = int(str(row[5]))
    return Segment(
        id=int(str(row[0])),
        first_seq=int(str(row[1])),
        prev_seq=int(str(row[2])),
        prev_hash=str(row[3]),
        reason=str(row[4]),
        started_at=datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000),
    )


def list_segments(session: Session) -> list[Segment]:
    """Every segment, oldest first (none in a record older than segments)."""
    if not session.has_table("record_segments"):
        return []
    return [_segment(r) for r in session.query(SEGMENT_SELECT + " ORDER BY first_seq, id")]


def latest_segment(session: Session) -> Segment | None:
    row = session.query_one(SEGMENT_SELECT + " ORDER BY first_seq DESC, id DESC LIMIT 1")
    return _segment(row) if row is not None else None


def _move_aside(path: Path, now: datetime) -> Path | None:
    """Rename a damaged SQLite file (and its -wal/-shm) out of the way; the new name, if any."""
    if not path.exists():
        return None
    kept = path.with_name(f"{path.name}.damaged-{now.strftime('%Y%m%dT%H%M%SZ')}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{kept}{suffix}"))
    return kept


def start_segment(
    url: RecordUrl, damage: Damage, anchor: Anchor | None, *, now: datetime
) -> Path | None:
    """Record a new segment after `damage`; return where a damaged file was moved, if anywhere.

    An unusable database is replaced by a new one whose chain starts after the anchor
    (seq and hash), so seqs never restart at 1 under the same CA. A readable one keeps its
    rows and continues from its current head.
    """
    kept = None
    if damage.file_lost and url.dialect == "sqlite":
        kept = _move_aside(Path(url.target), now)
    session = connect(url)
    try:
        ensure_schema(session)
        head = session.lock_head()
        if damage.file_lost and head.seq == 0 and anchor is not None:
            session.execute(
                "UPDATE chain_head SET seq = ?, row_hash = ?, anchor_seq = ?, anchor_hash = ?"
                " WHERE id = 1",
                (anchor.seq, anchor.row_hash, anchor.seq, anchor.row_hash),
            )
            prev_seq, prev_hash = anchor.seq, anchor.row_hash
        else:
            prev_seq, prev_hash = head.seq, head.row_hash
        row = session.query_one("SELECT COALESCE(MAX(id), 0) FROM record_segments")
        reason = damage.reason + (f" (damaged file kept as {kept.name})" if kept else "")
        session.execute(
            "INSERT INTO record_segments"
            " (id, first_seq, prev_seq, prev_hash, reason, started_at_us) VALUES (?, ?, ?, ?, ?, ?)",
            (
                int(row[0] if row else 0) + 1,
                prev_seq + 1,
                prev_seq,
                prev_hash or GENESIS_HASH,
                reason,
                int(now.timestamp()) * 1_000_000 + now.microsecond,
            ),
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    return kept
