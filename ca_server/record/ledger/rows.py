"""Converting between `IssuedCertificate`, table rows and `StoredCertificate`, column by column."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.chain import row_hash
from ca_server.record.ledger.database import Row
from ca_server.record.ledger.errors import LedgerWriteError
from ca_server.record.ledger.shape import ENTRY_COLUMNS, HASHED_COLUMNS, ROW_COLUMNS

SELECT_COLUMNS = ", ".join(ROW_COLUMNS)
INSERT_SQL = (
    f"INSERT INTO certificates ({SELECT_COLUMNS}) VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCertificate(IssuedCertificate):
    """A recorded certificate as read back, with its place in the chain."""

    seq: int
    recorded_at: datetime
    prev_hash: str
    row_hash: str


def _epoch(value: datetime, name: str) -> int:
    if value.tzinfo is None:
        raise LedgerWriteError(f"{name} must be timezone-aware")
    return int(value.timestamp())


def _stored_value(entry: IssuedCertificate, name: str, kind: str) -> Any:
    value = getattr(entry, name)
    if kind == "epoch":
        return _epoch(value, name)
    return value.lower() if name == "serial" else value  # the record keys serials in lowercase


def hashed_fields(entry: IssuedCertificate, *, seq: int, recorded_at: datetime) -> dict[str, Any]:
    """The hashed column values of `entry` at position `seq`."""
    fields: dict[str, Any] = {"seq": seq}
    for column in ENTRY_COLUMNS:
        fields[column.name] = _stored_value(entry, column.name, column.kind)
    us = _epoch(recorded_at, "recorded_at") * 1_000_000 + recorded_at.microsecond
    fields["recorded_at_us"] = us
    return fields


def chained_row(prev_hash: str, fields: dict[str, Any]) -> tuple[Any, ...]:
    """The full insert tuple (ROW_COLUMNS order) for `fields` chained after `prev_hash`."""
    digest = row_hash(prev_hash, fields)
    return (*(fields[name] for name in HASHED_COLUMNS), prev_hash, digest)


def row_mapping(row: Row) -> dict[str, Any]:
    return dict(zip(ROW_COLUMNS, row, strict=True))


def _from_epoch(seconds: Any) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)


def stored_from_row(row: Row) -> StoredCertificate:
    """Build a `StoredCertificate` from a row selected with SELECT_COLUMNS."""
    values = row_mapping(row)
    recorded_us = int(values.pop("recorded_at_us"))
    for column in ENTRY_COLUMNS:
        if column.kind == "epoch":
            values[column.name] = _from_epoch(values[column.name])
    values["recorded_at"] = _from_epoch(recorded_us // 1_000_000).replace(
        microsecond=recorded_us % 1_000_000
    )
    return StoredCertificate(**values)
