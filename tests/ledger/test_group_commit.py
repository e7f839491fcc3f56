"""Leader/follower group commit on SQLite and PostgreSQL: callers that commit for each other.

The chain lock is held from a separate session to keep a leader inside the database
while other callers queue behind it, so each batch's contents are known exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest

from ca_server.ledger import LedgerWriteError, RecorderOptions, open_reader, open_recorder
from ca_server.ledger.database import connect, parse_record_url
from ca_server.ledger.recorder import GroupCommitRecorder
from ca_server.record import IssuedCertificate
from tests.ledger.entries import make_entry

WAIT_S = 60.0  # how long a condition may take before the test fails (never a measurement)


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition` holds; fail (not skip) if it never does."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        done.wait(0.01)
    pytest.fail(f"never happened: {what}")


@contextmanager
def chain_locked(url: str) -> Iterator[None]:
    """Hold the record's chain lock from another session, as a writer in another process would."""
    session = connect(parse_record_url(url))
    try:
        session.lock_head()
        yield
    finally:
        session.rollback()
        session.close()


class Caller:
    """One `record()` call on its own thread, keeping its outcome."""

    def __init__(self, writer: GroupCommitRecorder, entry: IssuedCertificate) -> None:
        self.entry = entry
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(writer,))
        self._thread.start()

    def _run(self, writer: GroupCommitRecorder) -> None:
        try:
            writer.record(self.entry)
        except BaseException as exc:
            self.error = exc

    def join(self) -> Caller:
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "record() did not return"
        return self


def test_each_call_returns_only_after_its_row_is_committed(record_url: str) -> None:
    recorder = open_recorder(record_url)
    missing: list[str] = []

    def worker() -> None:
        session = connect(parse_record_url(record_url))
        try:
            for _ in range(10):
                entry = make_entry()
                recorder.record(entry)
                sql = "SELECT 1 FROM certificates WHERE serial = ?"
                if session.query_one(sql, (entry.serial,)) is None:
                    missing.append(entry.serial)
        finally:
            session.close()

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer = recorder.writer
    recorder.close()
    assert missing == []
    assert writer.rows == 120 and not writer.leading and writer.queued == 0
    report = open_reader(record_url).verify()
    assert report.ok and report.head_seq == 120


def test_callers_queued_behind_a_leader_are_committed_by_the_next_one(record_url: str) -> None:
    recorder = open_recorder(record_url)
    writer = recorder.writer
    with chain_locked(record_url):
        leader = Caller(writer, make_entry())
        eventually(lambda: writer.leading and writer.queued == 0, "the first caller leads")
        followers = [Caller(writer, make_entry()) for _ in range(5)]
        eventually(lambda: writer.queued == 5, "five callers queue behind the leader")
    for caller in (leader, *followers):
        assert caller.join().error is None
    assert (writer.commits, writer.rows) == (2, 6)  # the leader alone, then one batch of five
    recorder.close()
    assert open_reader(record_url).verify().head_seq == 6


def test_a_bad_entry_in_a_batch_fails_only_its_own_caller(record_url: str) -> None:
    recorder = open_recorder(record_url)
    writer = recorder.writer
    first = make_entry()
    recorder.record(first)
    with chain_locked(record_url):
        leader = Caller(writer, make_entry())
        eventually(lambda: writer.leading and writer.queued == 0, "the first caller leads")
        good = [Caller(writer, make_entry()) for _ in range(2)]
        eventually(lambda: writer.queued == 2, "two callers queue")
        duplicate = Caller(writer, make_entry(serial=first.serial))
        eventually(lambda: writer.queued == 3, "the duplicate queues")
        good.append(Caller(writer, make_entry()))
        eventually(lambda: writer.queued == 4, "a caller queues after the duplicate")
    assert isinstance(duplicate.join().error, LedgerWriteError)
    for caller in (leader, *good):
        assert caller.join().error is None
    recorder.close()
    reader = open_reader(record_url)
    report = reader.verify()
    assert report.ok and report.head_seq == 5
    for caller in (leader, *good):
        assert reader.get(caller.entry.serial) is not None
    reader.close()


def test_close_commits_waiting_callers_and_refuses_new_ones(record_url: str) -> None:
    recorder = open_recorder(record_url)
    writer = recorder.writer
    with chain_locked(record_url):
        waiting = [Caller(writer, make_entry())]
        eventually(lambda: writer.leading, "the first caller leads")
        waiting += [Caller(writer, make_entry()) for _ in range(3)]
        eventually(lambda: writer.queued == 3, "three callers queue")
        closing = threading.Thread(target=recorder.close)
        closing.start()
        eventually(lambda: writer.closed, "close() has begun")
        late = Caller(writer, make_entry()).join()
        assert isinstance(late.error, LedgerWriteError)
        assert "closed" in late.error.public_message
    closing.join(WAIT_S)
    assert not closing.is_alive()
    for caller in waiting:
        assert caller.join().error is None
    assert writer.rows == 4 and not writer.leading
    report = open_reader(record_url).verify()
    assert report.ok and report.head_seq == 4


def test_a_caller_that_times_out_waiting_is_not_recorded(record_url: str) -> None:
    recorder = open_recorder(
        record_url, options=RecorderOptions(write_timeout=timedelta(seconds=1))
    )
    writer = recorder.writer
    with chain_locked(record_url):
        leader = Caller(writer, make_entry())
        eventually(lambda: writer.leading, "the first caller leads")
        gave_up = Caller(writer, make_entry()).join()  # returns once its wait times out
        assert isinstance(gave_up.error, LedgerWriteError)
        assert writer.queued == 0
    assert leader.join().error is None
    after = make_entry()
    recorder.record(after)  # leadership was given up and is taken again
    recorder.close()
    reader = open_reader(record_url)
    assert reader.get(gave_up.entry.serial) is None
    assert reader.get(after.serial) is not None
    assert reader.verify().head_seq == 2
    reader.close()


def test_a_postgresql_statement_stuck_on_the_chain_lock_ends_in_an_error(
    request: pytest.FixtureRequest,
) -> None:
    # A leader commits in a request thread: a lock wait must not hold it forever.
    import psycopg

    from ca_server.ledger.postgres import PostgresSession

    url = request.getfixturevalue("postgres_cluster").database("stuck")
    open_recorder(url).close()  # creates the schema
    with chain_locked(url):
        session = PostgresSession.connect(url, statement_timeout_s=0.5)
        try:
            with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
                session.lock_head()
        finally:
            session.rollback()
            session.close()
