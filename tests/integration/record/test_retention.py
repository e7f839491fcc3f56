"""Retention: pruning removes old expired rows in bounded batches; the chain still verifies."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from ca_server.record.ledger import RecorderOptions, open_reader, open_recorder
from ca_server.record.ledger.database import parse_record_url
from ca_server.record.ledger.dialects import connect
from ca_server.record.ledger.retention import Pruner, prune_once
from tests.support.record_entries import BASE_TIME, make_entry

NOW = BASE_TIME + timedelta(days=60)
DAY = timedelta(days=1)


def fill(url: str, expiries: list[timedelta]) -> list[str]:
    """Record one certificate per offset from NOW; return their serials in seq order."""
    recorder = open_recorder(url)
    serials = []
    for offset in expiries:
        entry = make_entry(not_after=NOW + offset)
        recorder.record(entry)
        serials.append(entry.serial)
    recorder.close()
    return serials


def test_prune_in_bounded_batches_keeps_the_chain_verifiable(record_url: str) -> None:
    serials = fill(record_url, [-40 * DAY] * 25 + [-1 * DAY] * 5)
    session = connect(parse_record_url(record_url))
    cutoff = NOW - 30 * DAY
    assert prune_once(session, cutoff=cutoff, batch_size=10) == 10
    assert prune_once(session, cutoff=cutoff, batch_size=10) == 10
    assert prune_once(session, cutoff=cutoff, batch_size=10) == 5  # stops at the first young row
    assert prune_once(session, cutoff=cutoff, batch_size=10) == 0
    session.close()
    reader = open_reader(record_url, clock=lambda: NOW)
    report = reader.verify()
    assert report.ok and report.anchor_seq == 25 and report.rows_checked == 5
    assert reader.get(serials[24]) is None and reader.get(serials[25]) is not None
    reader.close()
    recorder = open_recorder(record_url)  # new rows chain on after pruning
    recorder.record(make_entry())
    recorder.close()
    assert open_reader(record_url).verify().head_seq == 31


def test_a_young_row_holds_back_later_old_rows(record_url: str) -> None:
    fill(record_url, [-40 * DAY, 5 * DAY, -40 * DAY, -40 * DAY])
    session = connect(parse_record_url(record_url))
    assert prune_once(session, cutoff=NOW - 30 * DAY, batch_size=100) == 1
    session.close()
    report = open_reader(record_url).verify()
    assert report.ok and report.anchor_seq == 1 and report.rows_checked == 3


def test_tampering_after_pruning_is_still_found(record_url: str) -> None:
    serials = fill(record_url, [-40 * DAY] * 3 + [DAY] * 3)
    session = connect(parse_record_url(record_url))
    prune_once(session, cutoff=NOW - 30 * DAY, batch_size=100)
    session.execute("UPDATE chain_head SET anchor_hash = ? WHERE id = 1", ("ab" * 32,))
    session.close()
    report = open_reader(record_url).verify()
    assert report.broken is not None and report.broken.serial == serials[3]


def test_pruner_thread_and_recorder_option(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fill(url, [-40 * DAY] * 7 + [DAY])
    pruner = Pruner(
        parse_record_url(url),
        max_age=30 * DAY,
        interval=timedelta(hours=1),
        batch_size=3,
        clock=lambda: NOW,
    )
    session = connect(parse_record_url(url))
    assert pruner.run_once(session) == 7 and pruner.pruned == 7  # three batches: 3 + 3 + 1
    session.close()
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    options = RecorderOptions(
        retention=30 * DAY, prune_interval=timedelta(milliseconds=20), clock=lambda: NOW
    )
    recorder = open_recorder(fresh, options=options)
    recorder.record(make_entry(not_after=NOW - 50 * DAY))
    deadline = time.monotonic() + 10
    while open_reader(fresh).verify().anchor_seq != 1:  # the background pruner removes it
        assert time.monotonic() < deadline, "the recorder's pruner never ran"
        time.sleep(0.02)
    recorder.close()
    assert open_reader(fresh).verify().ok
