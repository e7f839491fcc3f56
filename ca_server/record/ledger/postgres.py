"""PostgreSQL sessions (psycopg 3): `SELECT ... FOR UPDATE` on the chain-head row as the lock.

Replicas sharing one record take turns on that row, so a writer that stalls while holding it
(a frozen process, a GC pause, a partition with the transaction open) would stop every
replica. Each write transaction therefore bounds both sides (issue 22.6):

- the server aborts a holder idle inside it for `LOCK_HOLD_S` (its connection is closed, so
  its commit fails and its certificates are never sent);
- a writer never queues inside the server for the lock: it asks with NOWAIT and, while the
  row is taken, retries from the client after a short jittered pause, for at most
  `LOCK_WAIT_S`. A queued request would be granted the lock even while its own process is
  frozen, and every worker of a frozen replica would then keep it `LOCK_HOLD_S` in turn.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ca_server.record.ledger.database import HEAD_SELECT, Head, Row, Session, head_from_row

# The protocol's limit on parameters in one statement.
MAX_PARAMETERS = 65535
# Key of the transaction-scoped advisory lock that serialises schema migrations.
SCHEMA_LOCK_KEY = 0x42756C77  # "Bulw"
# No statement may hold the record thread longer than SQLite's busy timeout would: a lock
# wait or hung query must end in an error.
STATEMENT_TIMEOUT_S = 30.0
# A write transaction idle this long (its process stalled between two statements) is aborted
# by the server, releasing the chain lock. A live writer goes from statement to statement in
# milliseconds (a batch of 1000 rows: ~0.1 s); the margin is for a CPU-starved host.
LOCK_HOLD_S = 5.0
# How long a writer waits for the chain lock: longer than a stalled holder can keep it, so
# a stall costs the other replicas one wait, not their requests.
LOCK_WAIT_S = 10.0
# Pauses between tries while another writer holds the lock: doubling, jittered, capped.
RETRY_FIRST_S = 0.001
RETRY_MAX_S = 0.02
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
# Opens a write transaction whose holder the server aborts once idle for LOCK_HOLD_S.
BEGIN_WRITE = f"BEGIN; SET LOCAL idle_in_transaction_session_timeout = {int(LOCK_HOLD_S * 1000)}"
# Who holds the chain lock: sessions with the table lock FOR UPDATE takes that are not
# themselves waiting for a lock (the waiters queue behind them), longest in their state first.
LOCK_HOLDERS = """
SELECT name, state, age FROM (
  SELECT DISTINCT ON (a.pid) a.application_name AS name, a.state AS state,
         EXTRACT(EPOCH FROM clock_timestamp() - a.state_change) AS age
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
  WHERE l.relation = 'chain_head'::regclass AND l.mode = 'RowShareLock' AND l.granted
    AND a.wait_event_type IS DISTINCT FROM 'Lock' AND a.pid <> pg_backend_pid()
) holders ORDER BY age DESC LIMIT 3
"""


def application_name() -> str:
    """How this process's sessions appear in `pg_stat_activity` (a DSN setting wins)."""
    return f"bulwark-ca {socket.gethostname()} pid {os.getpid()}"[:63]


def _adapt(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresSession(Session):
    errors = (psycopg.Error,)
    entry_errors = (psycopg.IntegrityError, psycopg.DataError)
    seq_type = "BIGINT"

    def __init__(self, conn: psycopg.Connection[Row], *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self._conn = conn
        self._lock_wait = lock_wait_s

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> PostgresSession:
        given = conninfo_to_dict(url)
        defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
        if "application_name" not in given:
            defaults["application_name"] = application_name()
        conn = psycopg.connect(make_conninfo(url, **defaults), autocommit=True)
        try:
            conn.execute(f"SET statement_timeout = {int(statement_timeout_s * 1000)}")
        except psycopg.Error:
            conn.close()
            raise
        return cls(conn, lock_wait_s=lock_wait_s)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._conn.cursor() as cur:
            cur.execute(_adapt(sql), tuple(params))
            return cur.rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # Never psycopg's executemany: it pipelines, and the flush that ends its pipeline
        # leaves the server's idle-in-transaction timer unarmed, the timer that frees the
        # chain lock from a writer stalled right after its INSERT. An INSERT of many rows
        # goes as one statement with a VALUES group per row instead (also one round trip).
        head, values, group = sql.rpartition(" VALUES ")
        if not values or not rows:
            for row in rows:
                self.execute(sql, row)
            return
        per_statement = max(1, MAX_PARAMETERS // max(1, len(rows[0])))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            self.execute(
                f"{head} VALUES {', '.join([group] * len(chunk))}",
                [value for row in chunk for value in row],
            )

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
        # The row lock is held until COMMIT, and the head is read only once it is held.
        deadline = time.monotonic() + self._lock_wait
        pause = RETRY_FIRST_S
        while True:
            # SET LOCAL: this transaction only; readers keep the session's defaults.
            self.execute(BEGIN_WRITE)
            try:
                return head_from_row(self.query_one(HEAD_SELECT + " FOR UPDATE NOWAIT"))
            except psycopg.errors.LockNotAvailable:
                self.execute("ROLLBACK")
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, RETRY_MAX_S)

    def lock_holders(self) -> str:
        try:
            rows = self.query(LOCK_HOLDERS)
        except psycopg.Error:
            return ""
        return "; ".join(f"{name or '?'} ({state}, {float(age):.1f}s)" for name, state, age in rows)

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
