"""AsyncRecorder on SQLite and PostgreSQL: one commit in flight, the next batch forming behind it.

The chain lock is held from a separate session (as a writer in another process would)
to keep a commit inside the database while more entries queue behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from ca_server.record.ledger import LedgerWriteError, RecorderOptions, open_reader, open_recorder
from ca_server.record.ledger.async_recorder import AsyncRecorder
from ca_server.record.ledger.database import parse_record_url
from ca_server.record.ledger.dialects import connect
from ca_server.record.ledger.recorder import ManagedRecorder
from tests.support.record_entries import make_entry

WAIT_S = 60.0  # how long a condition may take before the test fails (never a measurement)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"never happened: {what}")


class ChainLock:
    """The record's chain lock, held from another session until `release()`."""

    def __init__(self, url: str) -> None:
        self._session = connect(parse_record_url(url))

    async def take(self) -> ChainLock:
        await asyncio.to_thread(self._session.lock_head)
        return self

    async def release(self) -> None:
        def end() -> None:
            self._session.rollback()
            self._session.close()

        await asyncio.to_thread(end)


def run(
    url: str,
    test: Callable[[AsyncRecorder, ManagedRecorder], Awaitable[None]],
    *,
    options: RecorderOptions | None = None,
    linger_s: float = 0.0,
) -> None:
    managed = open_recorder(url, options=options)

    async def main() -> None:
        recorder = AsyncRecorder(managed, linger_s=linger_s)
        try:
            await test(recorder, managed)
        finally:
            await recorder.close()

    asyncio.run(asyncio.wait_for(main(), WAIT_S))


def test_each_record_returns_after_its_row_is_committed(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        reader = open_reader(record_url)

        async def caller() -> list[str]:
            missing = []
            for _ in range(10):
                entry = make_entry()
                await recorder.record(entry)
                if await asyncio.to_thread(reader.get, entry.serial) is None:
                    missing.append(entry.serial)
            return missing

        results = await asyncio.gather(*(caller() for _ in range(8)))
        reader.close()
        assert [serial for missing in results for serial in missing] == []
        assert managed.writer.rows == 80
        assert managed.writer.commits < 80  # callers shared commits

    run(record_url, test)
    assert open_reader(record_url).verify().head_seq == 80


def test_entries_arriving_during_a_commit_go_in_the_next_one(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        writer = managed.writer
        lock = await ChainLock(record_url).take()
        first = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: writer.busy, "the first entry is being committed")
        behind = [asyncio.create_task(recorder.record(make_entry())) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert writer.commits == 0 and not any(t.done() for t in (first, *behind))
        await lock.release()
        await asyncio.gather(first, *behind)
        assert (writer.commits, writer.rows) == (2, 6)  # the first alone, then one batch of five

    run(record_url, test)


def test_an_idle_recorder_commits_at_once_even_with_a_linger(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        for _ in range(3):  # each would wait out the linger (longer than WAIT_S) if it applied
            await recorder.record(make_entry())
        assert (managed.writer.commits, managed.writer.rows) == (3, 3)

    run(record_url, test, linger_s=WAIT_S * 2)


def test_a_busy_recorder_lingers_to_gather_a_bigger_batch(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        writer = managed.writer
        lock = await ChainLock(record_url).take()
        first = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: writer.busy, "the first entry is being committed")
        second = asyncio.create_task(recorder.record(make_entry()))
        await asyncio.sleep(0.05)
        await lock.release()
        await first
        # the second batch waits out the linger: entries arriving meanwhile join it
        third = asyncio.create_task(recorder.record(make_entry()))
        await asyncio.gather(second, third)
        assert (writer.commits, writer.rows) == (2, 3)

    run(record_url, test, linger_s=0.5)


def test_a_bad_entry_fails_only_its_own_caller(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        taken = make_entry()
        await recorder.record(taken)
        lock = await ChainLock(record_url).take()
        blocker = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: managed.writer.busy, "a commit is running")
        good = [asyncio.create_task(recorder.record(make_entry())) for _ in range(3)]
        duplicate = asyncio.create_task(recorder.record(make_entry(serial=taken.serial)))
        await lock.release()
        await asyncio.gather(blocker, *good)
        with pytest.raises(LedgerWriteError):
            await duplicate

    run(record_url, test)
    report = open_reader(record_url).verify()
    assert report.ok and report.head_seq == 5


def test_close_commits_what_is_queued_and_refuses_new_entries(record_url: str) -> None:
    managed = open_recorder(record_url)

    async def main() -> None:
        recorder = AsyncRecorder(managed)
        lock = await ChainLock(record_url).take()
        waiting = [asyncio.create_task(recorder.record(make_entry())) for _ in range(4)]
        await eventually(lambda: managed.writer.busy, "a commit is running")
        closing = asyncio.create_task(recorder.close())
        await asyncio.sleep(0.05)
        with pytest.raises(LedgerWriteError, match="closed"):
            await recorder.record(make_entry())
        await lock.release()
        await asyncio.gather(*waiting, closing)

    asyncio.run(asyncio.wait_for(main(), WAIT_S))
    assert managed.writer.rows == 4
    assert open_reader(record_url).verify().head_seq == 4


def test_a_caller_that_times_out_before_its_batch_starts_is_not_recorded(
    record_url: str,
) -> None:
    gave_up, started = make_entry(), make_entry()

    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        lock = await ChainLock(record_url).take()
        first = asyncio.create_task(recorder.record(started))
        await eventually(lambda: managed.writer.busy, "a commit is running")
        with pytest.raises(LedgerWriteError):
            await recorder.record(gave_up)  # waits behind the stuck commit, then times out
        await lock.release()
        with pytest.raises(LedgerWriteError):
            await first  # timed out too, while its batch waited for the chain lock
        await recorder.record(make_entry())  # the writer goes on after leaving them out

    run(record_url, test, options=RecorderOptions(write_timeout=timedelta(seconds=0.5)))
    reader = open_reader(record_url)
    assert reader.get(gave_up.serial) is None
    # Issue 22.6: an entry whose caller gave up while the lock was held elsewhere is left out
    # once the lock is free, so no row stands for a certificate nobody received.
    assert reader.get(started.serial) is None
    assert reader.verify().head_seq == 1
    reader.close()


def test_each_waiting_caller_times_out_at_its_own_deadline(record_url: str) -> None:
    """Issue #18: one write-timeout timer serves every waiting entry (none per certificate);
    it must fail the oldest at its deadline and re-arm for the younger, not fail them early
    or forget them."""

    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        lock = await ChainLock(record_url).take()
        loop = asyncio.get_running_loop()
        older = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: managed.writer.busy, "a commit is running")
        started = loop.time()
        await asyncio.sleep(0.6)
        younger = [asyncio.create_task(recorder.record(make_entry())) for _ in range(20)]
        with pytest.raises(LedgerWriteError):
            await older
        assert not any(t.done() for t in younger), "a younger entry failed at the older deadline"
        for task in younger:
            with pytest.raises(LedgerWriteError):
                await task
        assert loop.time() - started >= 1.5  # 0.6 s later + its own 1 s timeout
        await lock.release()

    run(record_url, test, options=RecorderOptions(write_timeout=timedelta(seconds=1)))
    reader = open_reader(record_url)
    assert reader.verify().head_seq == 0  # every caller gave up before the lock was free
    reader.close()


def test_grouping_off_commits_one_by_one(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        async def caller() -> None:
            for _ in range(10):
                await recorder.record(make_entry())

        await asyncio.gather(*(caller() for _ in range(4)))
        assert managed.writer.commits == managed.writer.rows == 40

    run(record_url, test, options=RecorderOptions(max_batch=1))


def test_a_full_batch_does_not_wait_out_the_linger(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        writer = managed.writer
        lock = await ChainLock(record_url).take()
        first = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: writer.busy, "the first entry is being committed")
        full = [asyncio.create_task(recorder.record(make_entry())) for _ in range(4)]
        await asyncio.sleep(0.05)
        await lock.release()
        # four queued with max_batch 2: two full batches, neither waits out the linger
        await asyncio.gather(first, *full)
        assert (writer.commits, writer.rows) == (3, 5)

    run(record_url, test, options=RecorderOptions(max_batch=2), linger_s=WAIT_S * 2)


def test_callers_recording_back_to_back_share_every_commit(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        async def caller() -> None:
            for _ in range(5):
                await recorder.record(make_entry())

        await asyncio.gather(*(caller() for _ in range(8)))
        # the first entry alone (idle), the other 7, then all 8 together each time after:
        # a loaded recorder lingers even when its queue was empty the moment a commit ended
        assert managed.writer.rows == 40
        assert managed.writer.commits <= 7

    run(record_url, test, linger_s=0.2)


def test_one_call_of_record_many_lands_in_one_commit(record_url: str) -> None:
    """Issue 23: a batch call's entries are never split across commits, not by max_batch nor
    by entries queued around them."""

    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        writer = managed.writer
        lock = await ChainLock(record_url).take()
        first = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: writer.busy, "the first entry is being committed")
        before = asyncio.create_task(recorder.record(make_entry()))
        unit = [make_entry() for _ in range(5)]
        batch = asyncio.create_task(recorder.record_many(unit))
        after = asyncio.create_task(recorder.record(make_entry()))
        await asyncio.sleep(0.05)
        await lock.release()
        await asyncio.gather(first, before, after)
        assert await batch == [None] * 5
        # max_batch 3: [first], [before] (the unit of 5 does not fit beside it), [the 5],
        # [after]: the unit whole, though larger than max_batch
        assert (writer.commits, writer.rows) == (4, 8)

    run(record_url, test, options=RecorderOptions(max_batch=3))
    reader = open_reader(record_url)
    assert reader.verify().head_seq == 8
    reader.close()


def test_record_many_fails_exactly_the_entries_not_committed(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        taken = make_entry()
        await recorder.record(taken)
        unit = [make_entry(), make_entry(serial=taken.serial), make_entry()]
        errors = await recorder.record_many(unit)
        assert errors[0] is None and errors[2] is None
        assert isinstance(errors[1], LedgerWriteError)
        reader = open_reader(record_url)
        assert reader.get(unit[0].serial) is not None and reader.get(unit[2].serial) is not None
        reader.close()

    run(record_url, test)
    report = open_reader(record_url).verify()
    assert report.ok and report.head_seq == 3


def test_record_many_that_times_out_counts_none_as_committed(record_url: str) -> None:
    async def test(recorder: AsyncRecorder, managed: ManagedRecorder) -> None:
        lock = await ChainLock(record_url).take()
        first = asyncio.create_task(recorder.record(make_entry()))
        await eventually(lambda: managed.writer.busy, "a commit is running")
        errors = await recorder.record_many([make_entry(), make_entry()])
        assert all(isinstance(e, LedgerWriteError) for e in errors) and len(errors) == 2
        await lock.release()
        with pytest.raises(LedgerWriteError):
            await first

    run(record_url, test, options=RecorderOptions(write_timeout=timedelta(seconds=0.5)))
    reader = open_reader(record_url)
    assert reader.verify().head_seq <= 1  # the unit never started: not recorded
    reader.close()
