"""The tamper-evident hash chain over recorded certificates.

Each row carries `prev_hash` (the previous row's `row_hash`, or the genesis
hash) and `row_hash = SHA-256(prev_hash || canonical(row))`, where
`canonical` is a sorted-key compact JSON encoding of every recorded field
including `seq` (the fields are defined once, in `ca_server.record.entry.IssuedCertificate`).
Pruning removes a prefix of the chain and keeps the last removed row's `(seq, row_hash)` as the anchor the remaining rows chain from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ca_server.record.ledger.shape import HASHED_COLUMNS, LATE_COLUMNS

GENESIS_HASH = "0" * 64
__all__ = [
    "GENESIS_HASH",
    "HASHED_COLUMNS",
    "LATE_COLUMNS",
    "ChainBreak",
    "SegmentBreak",
    "VerifyReport",
    "row_hash",
    "verify_rows",
]


def canonical(fields: Mapping[str, object]) -> bytes:
    """The byte string hashed for one row: compact, sorted-key, ASCII JSON of HASHED_COLUMNS.

    A column added after the first schema is left out while it holds its empty value, so
    rows written before it existed hash as they did.
    """
    return json.dumps(
        {
            name: fields[name]
            for name in HASHED_COLUMNS
            if name not in LATE_COLUMNS or fields[name] != LATE_COLUMNS[name]
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


def row_hash(prev_hash: str, fields: Mapping[str, object]) -> str:
    """SHA-256(prev_hash bytes || canonical(fields)) as lowercase hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(fields)).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainBreak:
    """The first row at which the chain stops verifying."""

    seq: int
    serial: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentBreak:
    """Where the operator continued the chain after damage, and what the damage was."""

    first_seq: int  # the new segment's first row
    prev_seq: int  # the row it chains from
    reason: str  # why the CA continued (recorded at start)
    started_at: str  # RFC 3339
    damage: ChainBreak | None = None  # what verifying the stretch before it found


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """Outcome of recomputing the chain from the anchor to the head.

    `ok` covers the stretch after the last segment break; each `segments` entry says
    what the operator acknowledged when continuing (and what the stretch before it showed).
    """

    ok: bool
    rows_checked: int
    anchor_seq: int
    head_seq: int
    broken: ChainBreak | None = None
    segments: tuple[SegmentBreak, ...] = ()


def verify_rows(
    rows: Iterable[Mapping[str, object]],
    *,
    anchor_seq: int,
    anchor_hash: str,
    head_seq: int,
    head_hash: str,
) -> VerifyReport:
    """Recompute the chain over `rows` (ordered by seq) and report the first broken row."""
    prev_hash, expected_seq, checked = anchor_hash, anchor_seq + 1, 0

    def broken(seq: int, serial: str, reason: str) -> VerifyReport:
        return VerifyReport(
            ok=False,
            rows_checked=checked,
            anchor_seq=anchor_seq,
            head_seq=head_seq,
            broken=ChainBreak(seq=seq, serial=serial, reason=reason),
        )

    for row in rows:
        seq, serial = int(str(row["seq"])), str(row["serial"])
        if seq != expected_seq:
            return broken(seq, serial, f"rows {expected_seq}..{seq - 1} are missing before it")
        if row["prev_hash"] != prev_hash:
            return broken(seq, serial, "its prev_hash does not match the previous row's hash")
        if row_hash(prev_hash, row) != row["row_hash"]:
            return broken(seq, serial, "its contents do not match its row_hash (row was altered)")
        prev_hash, expected_seq, checked = str(row["row_hash"]), seq + 1, checked + 1
    if expected_seq - 1 != head_seq or prev_hash != head_hash:
        return broken(
            expected_seq,
            "",
            f"the chain ends at seq {expected_seq - 1} but its head records seq {head_seq}"
            " (rows removed from the end or head altered)",
        )
    return VerifyReport(ok=True, rows_checked=checked, anchor_seq=anchor_seq, head_seq=head_seq)
