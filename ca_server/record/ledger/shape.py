"""The record's columns, derived from the one definition of its fields (`IssuedCertificate`).

The table, the hashed columns (in table order), the insert tuple, the stored row
read back and the admin API's models all come from `ENTRY_COLUMNS`; nothing else
lists a record's fields.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ca_server.record.entry import IssuedCertificate

Kind = Literal["text", "epoch"]  # TEXT, or a datetime stored as BIGINT epoch seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One recorded field of an issued certificate."""

    name: str
    kind: Kind
    description: str
    summary: bool  # shown in listings, not only in the detail view
    since: int  # schema version whose migration adds the column

    @property
    def sql_type(self) -> str:
        return "TEXT" if self.kind == "text" else "BIGINT"

    @property
    def empty(self) -> str | int:
        """The value a row written before this column existed holds."""
        return "" if self.kind == "text" else 0


def _columns() -> tuple[Column, ...]:
    hints = typing.get_type_hints(IssuedCertificate)
    columns = []
    for spec in dataclasses.fields(IssuedCertificate):
        kind: Kind
        if hints[spec.name] is datetime:
            kind = "epoch"
        elif hints[spec.name] is str:
            kind = "text"
        else:  # pragma: no cover - a new field type needs a storage rule first
            raise TypeError(f"IssuedCertificate.{spec.name}: no column kind for {hints[spec.name]}")
        columns.append(
            Column(
                name=spec.name,
                kind=kind,
                description=str(spec.metadata.get("description", "")),
                summary=bool(spec.metadata.get("summary", False)),
                since=int(spec.metadata.get("since", 1)),
            )
        )
    return tuple(columns)


ENTRY_COLUMNS: tuple[Column, ...] = _columns()
# Every column covered by the hash, in definition order (prev_hash and row_hash are not);
# the table holds late columns (since > 1) after row_hash, where ALTER TABLE adds them.
HASHED_COLUMNS: tuple[str, ...] = ("seq", *(c.name for c in ENTRY_COLUMNS), "recorded_at_us")
ROW_COLUMNS: tuple[str, ...] = (*HASHED_COLUMNS, "prev_hash", "row_hash")
# Columns added after the first schema: hashed only when non-empty (old rows keep their hash).
LATE_COLUMNS: dict[str, str | int] = {c.name: c.empty for c in ENTRY_COLUMNS if c.since > 1}
