"""Record integrity at start (#13.3): damage refuses start unless the operator continues on a segment.

Defects covered (each passed silently at 505d662): a record with 4 KiB of random bytes in
the middle, a record with an altered row, and a deleted record (a fresh chain at seq 1 under
the same CA) were all used by a starting CA without a word.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ca_server.record.ledger import open_reader, open_recorder
from ca_server.record.ledger.integrity import (
    ANCHOR_FILE,
    Anchor,
    RecordDamaged,
    guard_record,
    read_anchor,
    write_anchor,
)
from tests.support.record_entries import make_entry

ROWS = 400  # ~1 KB each: record.db spans well over 100 pages


def seeded(tmp_path: Path, rows: int = ROWS) -> tuple[str, Path, Path]:
    """A record with `rows` rows and its anchor, as a CA that stopped cleanly leaves them."""
    db = tmp_path / "record.db"
    url = f"sqlite:///{db}"
    recorder = open_recorder(url)
    for _ in range(rows):
        recorder.record(make_entry())
    recorder.close()
    anchor_path = tmp_path / "ca" / ANCHOR_FILE
    guard_record(url, anchor_path).stop()  # the keeper writes the head at stop
    checkpoint(db)
    return url, db, anchor_path


def checkpoint(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def corrupt_middle(db: Path) -> None:
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(4096))


def alter_row(db: Path, seq: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE certificates SET spiffe_id = 'spiffe://cluster.local/ns/x/sa/evil' WHERE seq = ?",
        (seq,),
    )
    conn.commit()
    conn.close()


def test_anchor_follows_the_head(tmp_path: Path) -> None:
    url, _, anchor_path = seeded(tmp_path, rows=3)
    anchor = read_anchor(anchor_path)
    assert anchor is not None and anchor.seq == 3
    assert oct(anchor_path.stat().st_mode & 0o777) == "0o600"
    reader = open_reader(url)
    assert reader.get(make_entry().serial) is None
    reader.close()


def test_a_healthy_record_and_a_new_one_start(tmp_path: Path) -> None:
    guard_record(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "ca" / ANCHOR_FILE).stop()
    url, _, anchor_path = seeded(tmp_path)
    guard_record(url, anchor_path).stop()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("corrupt", "SQLite"),
        ("altered", "hash chain broken at row 390"),
        ("deleted", f"is missing but {{anchor}} says seq {ROWS} was recorded"),
        ("behind", f"it ends at seq {ROWS - 1} but {{anchor}} says seq {ROWS}"),
        ("replaced", "it is empty but"),
    ],
)
def test_damage_refuses_start_naming_file_and_tool(
    tmp_path: Path, damage: str, needle: str
) -> None:
    url, db, anchor_path = seeded(tmp_path)
    damage_record(db, damage)
    with pytest.raises(RecordDamaged) as caught:
        guard_record(url, anchor_path)
    message = str(caught.value)
    assert str(db) in message and "bulwark certs verify-log" in message
    assert "--record-continue-after-damage" in message
    assert needle.format(anchor=anchor_path) in message


def damage_record(db: Path, damage: str) -> None:
    if damage == "corrupt":
        corrupt_middle(db)
    elif damage == "altered":
        alter_row(db, 390)
    elif damage == "deleted":
        db.unlink()
    elif damage == "behind":
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM certificates WHERE seq = ?", (ROWS,))
        row = conn.execute(
            "SELECT row_hash FROM certificates WHERE seq = ?", (ROWS - 1,)
        ).fetchone()
        conn.execute("UPDATE chain_head SET seq = ?, row_hash = ?", (ROWS - 1, row[0]))
        conn.commit()
        conn.close()
    elif damage == "replaced":
        db.unlink()
        open_recorder(f"sqlite:///{db}").close()


@pytest.mark.parametrize("damage", ["corrupt", "altered", "deleted", "behind", "replaced"])
def test_continuing_records_a_segment_and_keeps_seqs(tmp_path: Path, damage: str) -> None:
    url, db, anchor_path = seeded(tmp_path)
    damage_record(db, damage)
    guard_record(url, anchor_path, continue_after_damage=True).stop()
    recorder = open_recorder(url)
    recorder.record(make_entry())
    recorder.close()
    reader = open_reader(url)
    try:
        report = reader.verify()
    finally:
        reader.close()
    assert report.ok, report
    assert report.head_seq > ROWS - 1  # never a fresh chain at seq 1
    (segment,) = report.segments
    assert segment.first_seq == report.head_seq
    if damage == "altered":
        assert segment.damage is not None and segment.damage.seq == 390
    if damage in ("corrupt", "deleted"):
        assert report.rows_checked == 1 and report.anchor_seq == ROWS
    # The next start sees a healthy record: the break is acknowledged, not damage.
    guard_record(url, anchor_path).stop()
    assert read_anchor(anchor_path) == Anchor(seq=report.head_seq, row_hash=head_hash(url))
    if damage == "corrupt":
        assert list(tmp_path.glob("record.db.damaged-*"))


def test_an_unreadable_anchor_is_damage(tmp_path: Path) -> None:
    url, _, anchor_path = seeded(tmp_path, rows=2)
    anchor_path.write_text("{not json")
    with pytest.raises(RecordDamaged, match=r"record anchor .* is unreadable"):
        guard_record(url, anchor_path)


def test_an_anchor_inside_the_pruned_prefix_is_not_damage(tmp_path: Path) -> None:
    url, _, anchor_path = seeded(tmp_path, rows=5)
    conn = sqlite3.connect(tmp_path / "record.db")
    digest = conn.execute("SELECT row_hash FROM certificates WHERE seq = 3").fetchone()[0]
    conn.execute("DELETE FROM certificates WHERE seq <= 3")
    conn.execute("UPDATE chain_head SET anchor_seq = 3, anchor_hash = ?", (digest,))
    conn.commit()
    conn.close()
    write_anchor(anchor_path, Anchor(seq=2, row_hash="ab" * 32))
    guard_record(url, anchor_path).stop()


def head_hash(url: str) -> str:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return str(conn.execute("SELECT row_hash FROM chain_head").fetchone()[0])
    finally:
        conn.close()


def test_an_altered_row_is_found_on_each_backend(record_url: str, tmp_path: Path) -> None:
    """The tail check and the segment work alike on SQLite and PostgreSQL."""
    from ca_server.record.ledger.database import parse_record_url
    from ca_server.record.ledger.dialects import connect

    recorder = open_recorder(record_url)
    for _ in range(5):
        recorder.record(make_entry())
    recorder.close()
    anchor_path = tmp_path / "ca" / ANCHOR_FILE
    guard_record(record_url, anchor_path).stop()
    session = connect(parse_record_url(record_url))
    session.execute("UPDATE certificates SET peer = 'forged' WHERE seq = 3")
    session.close()
    with pytest.raises(RecordDamaged, match="hash chain broken at row 3"):
        guard_record(record_url, anchor_path)
    guard_record(record_url, anchor_path, continue_after_damage=True).stop()
    reader = open_reader(record_url)
    try:
        report = reader.verify()
    finally:
        reader.close()
    assert report.ok and report.segments[0].first_seq == 6
    assert report.segments[0].damage is not None and report.segments[0].damage.seq == 3
