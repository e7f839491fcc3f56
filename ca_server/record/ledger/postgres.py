"""PostgreSQL sessions (psycopg 3): `SELECT ... FOR UPDATE` on the chain-head row as the lock."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ca_server.record.ledger.database import HEAD_SELECT, Head, Row, Session, head_from_row

# Key of the transaction-scoped advisory lock that serialises schema migrations.
SCHEMA_LOCK_KEY = 0x42756C77  # "Bulw"
# No statement may hold the record thread longer than SQLite's busy timeout would: a lock
# wait or hung query must end in an error.
STATEMENT_TIMEOUT_S = 30.0
# A database gone silent (network partition, dead host) must end in an error too, not hold
# the record thread until TCP gives up (~15 min): probe an idle connection after 10 s, give
# up after 3 unanswered probes, or after 30 s of unacknowledged writes. A DSN setting wins.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def _adapt(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresSession(Session):
    errors = (psycopg.Error,)
    seq_type = "BIGINT"

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    @classmethod
    def connect(
        cls, url: str, *, statement_timeout_s: float = STATEMENT_TIMEOUT_S
    ) -> PostgresSession:
        given = conninfo_to_dict(url)
        defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
        conn = psycopg.connect(make_conninfo(url, **defaults), autocommit=True)
        try:
            conn.execute(f"SET statement_timeout = {int(statement_timeout_s * 1000)}")
        except psycopg.Error:
            conn.close()
            raise
        return cls(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._conn.cursor() as cur:
            cur.execute(_adapt(sql), tuple(params))
            return cur.rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_adapt(sql), [tuple(r) for r in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._conn.cursor() as cur:
            cur.execute(_adapt(sql), tuple(params))
            return list(cur.fetchall())

    def has_table(self, name: str) -> bool:
        row = self.query_one("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(row and row[0])

    def begin_schema_change(self) -> None:
        self.execute("BEGIN")
        self.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))

    def lock_head(self) -> Head:
        # The row lock is held until COMMIT; READ COMMITTED re-reads the row once the
        # previous holder commits, so every writer sees the latest head.
        self.execute("BEGIN")
        return head_from_row(self.query_one(HEAD_SELECT + " FOR UPDATE"))

    def begin_snapshot(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def rollback(self) -> None:
        if self._conn.closed:
            return
        try:
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.execute("ROLLBACK")
        except psycopg.Error:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
