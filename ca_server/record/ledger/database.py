"""One small interface over SQLite and PostgreSQL: sessions, the chain-head lock, the URL.

SQL is written once with `?` placeholders; each dialect's `Session` adapts it.
Sessions run in autocommit mode and manage transactions with explicit
`BEGIN`/`COMMIT`, so both databases behave alike. The drivers (`sqlite.py`,
`postgres.py`) implement `Session`; `dialects.py` picks one for a URL, so this
module imports neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ca_server.record.ledger.errors import RecordUrlError, SchemaError

Row = tuple[Any, ...]
RECORD_FILE_NAME = "record.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """The chain head (last row) and the anchor left by pruning."""

    seq: int
    row_hash: str
    anchor_seq: int
    anchor_hash: str


class Session(ABC):
    """One database connection, used by one thread at a time."""

    #: Exceptions of the driver that mean "this operation failed".
    errors: tuple[type[Exception], ...]
    #: Those of them that blame the data written (a duplicate serial), not the database: a
    #: batch failing with one is retried entry by entry, so the bad entry fails alone.
    entry_errors: tuple[type[Exception], ...]
    #: SQL type of the seq primary key column.
    seq_type: str

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the affected row count."""

    @abstractmethod
    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each parameter row."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a SELECT and return all rows."""

    @abstractmethod
    def begin_schema_change(self) -> None:
        """Start a transaction that excludes every other schema change and writer."""

    @abstractmethod
    def lock_head(self) -> Head:
        """Start a write transaction holding the chain lock; return the current head."""

    @abstractmethod
    def begin_snapshot(self) -> None:
        """Start a read transaction that sees one consistent snapshot."""

    def commit(self) -> None:
        self.execute("COMMIT")

    @abstractmethod
    def rollback(self) -> None:
        """Abandon the current transaction, if any; never raises."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; never raises."""

    @abstractmethod
    def has_table(self, name: str) -> bool:
        """Whether the table `name` exists (an older record may lack a newer table)."""

    def lock_holders(self) -> str:
        """Who else holds or waits in a write transaction now, for an operator ("" if unknown)."""
        return ""

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None


HEAD_SELECT = "SELECT seq, row_hash, anchor_seq, anchor_hash FROM chain_head WHERE id = 1"


def head_from_row(row: Row | None) -> Head:
    if row is None:
        raise SchemaError("the record has no chain_head row; it is not a Bulwark record")
    return Head(
        seq=int(row[0]), row_hash=str(row[1]), anchor_seq=int(row[2]), anchor_hash=str(row[3])
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordUrl:
    """A parsed `--record` value: `sqlite:///abs/path.db`, a plain path, or `postgresql://...`."""

    dialect: str  # "sqlite" or "postgresql"
    target: str  # file path for SQLite, the libpq URL for PostgreSQL

    def redacted(self) -> str:
        """The URL with any password removed, fit for logs and errors."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()


def parse_record_url(url: str) -> RecordUrl:
    """Parse a record URL; `RecordUrlError` says what is wrong."""
    if not url:
        raise RecordUrlError("record URL is empty")
    if url.startswith(("postgresql://", "postgres://")):
        return RecordUrl(dialect="postgresql", target=url)
    if url.startswith("sqlite:"):
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc or not path:
            raise RecordUrlError(
                "SQLite record URL must look like sqlite:///absolute/path.db or sqlite:relative.db"
            )
        return RecordUrl(dialect="sqlite", target=path)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise RecordUrlError(
            f"record URL scheme {scheme!r} is not supported (use sqlite or postgresql)"
        )
    return RecordUrl(dialect="sqlite", target=url)


def default_record_url(data_dir: Path) -> str:
    """The default record: a SQLite file in the CA's data directory."""
    return f"sqlite:///{(data_dir / RECORD_FILE_NAME).resolve()}"
