"""The record on SQLite and PostgreSQL: durability, many writers, tampering, lock waits."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ca_server.errors import RecordWriteFailed
from ca_server.record.ledger import (
    LedgerWriteError,
    RecorderOptions,
    SchemaError,
    open_reader,
    open_recorder,
)
from ca_server.record.ledger.database import parse_record_url
from ca_server.record.ledger.dialects import connect
from tests.support.postgres import PostgresCluster
from tests.support.record_entries import make_entry


def execute(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Change the database behind the record's back, as an attacker or operator would."""
    session = connect(parse_record_url(url))
    try:
        session.execute(sql, params)
    finally:
        session.close()


def test_record_round_trips_every_field(record_url: str) -> None:
    recorder = open_recorder(record_url)
    entry = make_entry(namespace="shop", service_account="cart")
    recorder.record(entry)
    recorder.close()
    reader = open_reader(record_url)
    stored = reader.get(entry.serial.upper())
    assert stored is not None
    for name in entry.__dataclass_fields__:
        assert getattr(stored, name) == getattr(entry, name), name
    assert stored.seq == 1
    assert reader.verify().ok
    assert reader.get("abc123") is None
    reader.close()


def test_threads_recording_at_once_extend_one_chain(record_url: str) -> None:
    recorder = open_recorder(record_url)
    entries = [make_entry(service_account=f"sa{i % 7}") for i in range(200)]
    barrier = threading.Barrier(8)

    def worker(chunk: list[object]) -> None:
        barrier.wait()
        for entry in chunk:
            recorder.record(entry)  # type: ignore[arg-type]

    threads = [threading.Thread(target=worker, args=(entries[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.writer.rows == 200
    recorder.close()
    reader = open_reader(record_url)
    report = reader.verify()
    assert report.ok and report.rows_checked == 200 and report.head_seq == 200
    for entry in entries[::37]:
        assert reader.get(entry.serial) is not None
    reader.close()


def _write_from_process(url: str, count: int, namespace: str) -> None:
    recorder = open_recorder(url)
    done = threading.Semaphore(0)

    def one() -> None:
        recorder.record(make_entry(namespace=namespace))
        done.release()

    for _ in range(count):
        threading.Thread(target=one).start()
    for _ in range(count):
        done.acquire()
    recorder.close()


def test_several_processes_extend_one_linear_chain(record_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_write_from_process, args=(record_url, 60, f"ns{i}")) for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    reader = open_reader(record_url)
    report = reader.verify()
    assert report.ok, report
    assert report.rows_checked == 240 and report.head_seq == 240
    reader.close()


def test_failed_entry_fails_only_its_caller_and_records_nothing(record_url: str) -> None:
    recorder = open_recorder(record_url)
    first = make_entry()
    recorder.record(first)
    duplicate = make_entry(serial=first.serial)
    with pytest.raises(LedgerWriteError) as info:
        recorder.record(duplicate)
    assert isinstance(info.value, RecordWriteFailed)  # the CA maps it to INTERNAL
    assert info.value.public_message == "the issuance record could not be written"
    recorder.record(make_entry())
    recorder.close()
    reader = open_reader(record_url)
    report = reader.verify()
    assert report.ok and report.head_seq == 2
    reader.close()


def test_database_gone_raises_in_caller(record_url: str) -> None:
    recorder = open_recorder(record_url)
    recorder.record(make_entry())
    execute(record_url, "DROP TABLE certificates")
    with pytest.raises(LedgerWriteError):
        recorder.record(make_entry())
    recorder.close()


def test_edited_row_is_reported_with_its_serial(record_url: str) -> None:
    recorder = open_recorder(record_url)
    entries = [make_entry() for _ in range(20)]
    for entry in entries:
        recorder.record(entry)
    recorder.close()
    execute(record_url, "UPDATE certificates SET namespace = 'evil' WHERE seq = 7")
    report = open_reader(record_url).verify()
    assert not report.ok and report.broken is not None
    assert report.broken.seq == 7 and report.broken.serial == entries[6].serial
    assert "altered" in report.broken.reason


def test_removed_rows_are_reported(record_url: str) -> None:
    recorder = open_recorder(record_url)
    entries = [make_entry() for _ in range(10)]
    for entry in entries:
        recorder.record(entry)
    recorder.close()
    execute(record_url, "DELETE FROM certificates WHERE seq = 4")
    report = open_reader(record_url).verify()
    assert report.broken is not None and report.broken.seq == 5
    assert report.broken.serial == entries[4].serial and "missing" in report.broken.reason
    execute(record_url, "DELETE FROM certificates WHERE seq >= 4")
    report = open_reader(record_url).verify()
    assert report.broken is not None and "head records seq 10" in report.broken.reason


def test_newer_schema_is_refused(record_url: str) -> None:
    open_recorder(record_url).close()
    open_recorder(record_url).close()  # reopening an up-to-date record changes nothing
    execute(record_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match="newer"):
        open_recorder(record_url)


def test_bad_record_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        open_recorder("mysql://x/y")
    with pytest.raises(ValueError, match="sqlite:///"):
        open_recorder("sqlite://host/x.db")


def test_write_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RecorderOptions(write_timeout=timedelta(0))


def test_writer_reconnects_after_postgres_drops_its_connection(
    postgres_cluster: PostgresCluster,
) -> None:
    url = postgres_cluster.database()
    recorder = open_recorder(url)
    recorder.record(make_entry())
    execute(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    recorder.record(make_entry())  # the stale connection is replaced, the caller never notices
    recorder.close()
    report = open_reader(url).verify()
    assert report.ok and report.head_seq == 2


def test_reader_replaces_connections_postgres_dropped(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.database()
    recorder = open_recorder(url)
    entry = make_entry()
    recorder.record(entry)
    recorder.close()
    reader = open_reader(url)
    assert reader.get(entry.serial) is not None  # leaves a pooled connection behind
    execute(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert reader.get(entry.serial) is not None
    assert reader.verify().ok
    reader.close()


def test_sqlite_record_is_private(tmp_path: Path) -> None:
    path = tmp_path / "record.db"
    recorder = open_recorder(f"sqlite:///{path}")
    recorder.record(make_entry())
    for file in (path, path.with_name("record.db-wal")):
        assert file.stat().st_mode & 0o777 == 0o600, file
    recorder.close()


def test_record_after_close_raises(tmp_path: Path) -> None:
    recorder = open_recorder(f"sqlite:///{tmp_path / 'r.db'}")
    recorder.close()
    with pytest.raises(LedgerWriteError, match="closed"):
        recorder.record(make_entry())


def test_a_postgresql_writer_waiting_for_the_chain_lock_gives_up_in_time(
    request: pytest.FixtureRequest,
) -> None:
    # A commit waiting on another writer's chain lock must not hold the record thread forever;
    # and it waits from the client (NOWAIT, retried), never queued inside the server, where the
    # lock would be granted to it even while its process is frozen (issue 22.6).
    import psycopg

    from ca_server.record.ledger.postgres import PostgresSession

    url = request.getfixturevalue("postgres_cluster").database("stuck")
    open_recorder(url).close()  # creates the schema
    holder = psycopg.connect(url)  # another writer holding the chain lock
    holder.execute("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")
    session = PostgresSession.connect(url, lock_wait_s=1.5)
    outcome: list[BaseException] = []

    def wait_for_lock() -> None:
        try:
            session.lock_head()
        except psycopg.Error as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_lock)
    try:
        waiter.start()
        time.sleep(0.5)  # the writer is waiting now
        queued = holder.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        waiter.join(30)
        assert queued == (0,), "a writer queued inside the server for the lock"
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.LockNotAvailable)
    finally:
        session.rollback()
        session.close()
        holder.rollback()
        holder.close()


def test_postgresql_sessions_give_up_on_a_silent_database(
    request: pytest.FixtureRequest,
) -> None:
    # A partition cannot be staged here (no packet filter), so check what bounds it: TCP
    # keepalives and a user timeout on every session, unless the DSN sets its own.
    from ca_server.record.ledger.postgres import PostgresSession

    url = request.getfixturevalue("postgres_cluster").database("silent")
    session = PostgresSession.connect(url)
    try:
        params = session._conn.info.get_parameters()
        assert params["keepalives"] == "1" and params["keepalives_idle"] == "10"
        assert params["keepalives_count"] == "3" and params["tcp_user_timeout"] == "30000"
    finally:
        session.close()
    own = PostgresSession.connect(url + ("&" if "?" in url else "?") + "keepalives_idle=42")
    try:
        assert own._conn.info.get_parameters()["keepalives_idle"] == "42"
    finally:
        own.close()


@pytest.mark.slow
def test_a_writer_stalled_holding_the_chain_lock_is_aborted_and_the_others_go_on(
    postgres_cluster: PostgresCluster,
) -> None:
    """Issue 22.6: a writer that stalls inside its transaction (its process frozen) loses the
    lock to the server, so the other writers commit; it cannot commit what it had written."""
    import psycopg

    from ca_server.record.ledger.rows import INSERT_SQL, chained_row, hashed_fields

    url = postgres_cluster.database("stalled")
    recorder = open_recorder(url)
    stalled, stalled_entry, healthy = connect(parse_record_url(url)), make_entry(), make_entry()
    head = stalled.lock_head()  # half of an append: the lock taken, the row written...
    fields = hashed_fields(stalled_entry, seq=head.seq + 1, recorded_at=stalled_entry.not_before)
    stalled.execute_many(INSERT_SQL, [chained_row(head.row_hash, fields)])
    try:
        recorder.record(healthy)  # ...then the writer stalls: the others wait it out and commit
        with pytest.raises(psycopg.Error):
            stalled.commit()  # the thawed writer's commit fails: its caller is told, not served
    finally:
        stalled.close()
        recorder.close()
    reader = open_reader(url)
    assert reader.get(healthy.serial) is not None
    assert reader.get(stalled_entry.serial) is None
    assert reader.verify().head_seq == 1
    reader.close()


@pytest.mark.slow
def test_a_writer_gives_up_on_a_lock_held_by_a_foreign_session(
    postgres_cluster: PostgresCluster,
) -> None:
    """A session outside Bulwark's bounds (an operator's psql) holding the chain lock makes a
    commit fail with the lock timeout, not wait out the 30 s statement timeout."""
    import psycopg

    url = postgres_cluster.database("foreign")
    recorder = open_recorder(url)
    operator = psycopg.connect(url)
    operator.execute("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")
    try:
        with pytest.raises(LedgerWriteError) as failed:
            recorder.record(make_entry())
        assert isinstance(failed.value.__cause__, psycopg.errors.LockNotAvailable)
    finally:
        operator.close()
        recorder.close()
