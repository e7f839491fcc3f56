"""Which `Session` implementation serves a record URL: the only module importing the drivers.

`database.py` defines the interface and the URL; `sqlite.py` and `postgres.py`
implement it; this module chooses between them, so the imports point one way.
"""

from __future__ import annotations

from ca_server.record.ledger.database import RecordUrl, Session


def driver_errors(url: RecordUrl) -> tuple[type[Exception], ...]:
    """The exception classes of the driver `url` uses."""
    if url.dialect == "postgresql":
        from ca_server.record.ledger.postgres import PostgresSession  # psycopg loads only when used

        return PostgresSession.errors
    from ca_server.record.ledger.sqlite import SqliteSession

    return SqliteSession.errors


def entry_errors(url: RecordUrl) -> tuple[type[Exception], ...]:
    """The driver's exceptions that blame the data written rather than the database."""
    if url.dialect == "postgresql":
        from ca_server.record.ledger.postgres import PostgresSession

        return PostgresSession.entry_errors
    from ca_server.record.ledger.sqlite import SqliteSession

    return SqliteSession.entry_errors


def connect(url: RecordUrl, *, lock_wait_s: float | None = None) -> Session:
    """Open one session to the database `url` names; `lock_wait_s` bounds its wait for the
    chain lock (the driver's default when None)."""
    if url.dialect == "postgresql":
        from ca_server.record.ledger.postgres import PostgresSession

        if lock_wait_s is None:
            return PostgresSession.connect(url.target)
        return PostgresSession.connect(url.target, lock_wait_s=lock_wait_s)
    from ca_server.record.ledger.sqlite import SqliteSession

    if lock_wait_s is None:
        return SqliteSession.connect(url.target)
    return SqliteSession.connect(url.target, lock_wait_s=lock_wait_s)
