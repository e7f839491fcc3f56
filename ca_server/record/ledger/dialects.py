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


def connect(url: RecordUrl) -> Session:
    """Open one session to the database `url` names."""
    if url.dialect == "postgresql":
        from ca_server.record.ledger.postgres import PostgresSession

        return PostgresSession.connect(url.target)
    from ca_server.record.ledger.sqlite import SqliteSession

    return SqliteSession.connect(url.target)
