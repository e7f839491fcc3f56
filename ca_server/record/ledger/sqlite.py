"""SQLite sessions: WAL journal, full fsync on commit, `BEGIN IMMEDIATE` as the chain lock."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from ca_server.record.ledger.database import HEAD_SELECT, Head, Row, Session, head_from_row

BUSY_TIMEOUT_MS = 30_000


class SqliteSession(Session):
    errors = (sqlite3.Error,)
    entry_errors = (sqlite3.IntegrityError, sqlite3.DataError)
    seq_type = "INTEGER"  # an alias of the rowid

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, path: str, *, lock_wait_s: float = BUSY_TIMEOUT_MS / 1000) -> SqliteSession:
        if path != ":memory:" and not os.path.exists(path):
            # Created 0600 (caller details are operator-only); SQLite gives -wal/-shm the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=lock_wait_s
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(lock_wait_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: every commit fsyncs the WAL, so a committed row survives power loss.
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error:
            conn.close()
            raise
        return cls(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, [tuple(r) for r in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._conn.execute(sql, tuple(params)).fetchall())

    def has_table(self, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.query_one(sql, (name,)) is not None

    def begin_schema_change(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def lock_head(self) -> Head:
        # BEGIN IMMEDIATE takes the database's single write lock before the head is read,
        # so writers in every process append to the chain one after another.
        self._conn.execute("BEGIN IMMEDIATE")
        return head_from_row(self.query_one(HEAD_SELECT))

    def begin_snapshot(self) -> None:
        self._conn.execute("BEGIN")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
