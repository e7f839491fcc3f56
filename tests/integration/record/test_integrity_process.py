"""A real CA on a damaged record (#13.3): exit 2 naming the file and verify-log, or a visible segment.

At 505d662 each of these CAs started, became ready and issued on top of the damage.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from ca_server.record.ledger import open_recorder
from tests.integration.record.test_cli import bulwark
from tests.integration.record.test_integrity import ROWS, alter_row, checkpoint, corrupt_middle
from tests.support.ca_process import serve_once, start_ca
from tests.support.record_entries import make_entry


def ca_with_history(tmp_path: Path) -> Path:
    """A CA data dir whose record holds ROWS rows and whose anchor says so (a clean stop)."""
    data_dir = tmp_path / "ca"
    data_dir.mkdir()
    recorder = open_recorder(f"sqlite:///{data_dir / 'record.db'}")
    for _ in range(ROWS):
        recorder.record(make_entry())
    recorder.close()
    start_ca(data_dir).stop()
    assert (data_dir / "ca" / "record-anchor.json").exists()
    checkpoint(data_dir / "record.db")
    return data_dir


@pytest.mark.parametrize("damage", ["corrupt", "altered", "deleted"])
def test_a_damaged_record_stops_the_ca_with_exit_2(tmp_path: Path, damage: str) -> None:
    data_dir = ca_with_history(tmp_path)
    db = data_dir / "record.db"
    if damage == "corrupt":
        corrupt_middle(db)
    elif damage == "altered":
        alter_row(db, ROWS // 2)
    else:
        db.unlink()
    result = serve_once(data_dir)
    assert result.returncode == 2, result.stderr
    assert str(db.resolve()) in result.stderr
    assert "bulwark certs verify-log" in result.stderr
    assert "--record-continue-after-damage" in result.stderr
    assert "Traceback" not in result.stderr
    if damage == "deleted":
        assert not db.exists()  # no fresh chain was started at seq 1


def test_continuing_after_damage_shows_the_break(tmp_path: Path) -> None:
    data_dir = ca_with_history(tmp_path)
    alter_row(data_dir / "record.db", ROWS // 2)
    ca = start_ca(data_dir, "--record-continue-after-damage")
    try:
        body = httpx.get(ca.admin_url + "/v1/record/verify", timeout=30).json()
        assert body["ok"] is True
        (segment,) = body["segments"]
        assert segment["first_seq"] == ROWS + 1 and segment["damage"]["seq"] == ROWS // 2
        assert "hash chain broken" in segment["reason"]
        assert "continuing on a new segment" in ca.log()
    finally:
        assert ca.stop() == 0
    shown = bulwark("certs", "verify-log", "--record", f"sqlite:///{data_dir / 'record.db'}")
    assert shown.returncode == 0, shown.stderr
    assert f"segment break before seq {ROWS + 1}" in shown.stdout
    assert f"seq {ROWS // 2} its contents do not match" in shown.stdout
    # The next start, without the flag, is a normal one: the break was acknowledged.
    start_ca(data_dir).stop()
    assert os.path.exists(data_dir / "record.db")
