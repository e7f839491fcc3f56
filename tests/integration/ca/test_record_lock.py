"""An SQLite record is never shared by two CA processes (issue #15 item 2)."""

from __future__ import annotations

from pathlib import Path

from tests.support.ca_process import serve_once, started_ca


def test_second_ca_on_the_same_sqlite_record_exits_2(tmp_path: Path) -> None:
    """Defect: two CAs with their own data dirs but one `--record sqlite:///...` file both
    started and chained rows onto the same file without seeing each other's head."""
    record = tmp_path / "shared" / "record.db"
    record.parent.mkdir(mode=0o700)
    url = f"sqlite:///{record}"
    with started_ca(tmp_path / "first", "--record", url) as first:
        second = serve_once(tmp_path / "second", "--record", url)
        assert second.returncode == 2, second.stderr
        message = second.stderr.strip()
        assert len(message.splitlines()) == 1, message  # one line, no traceback
        assert str(record) in message
        assert "PostgreSQL" in message
        assert f"pid {first.process.pid}" in message  # type: ignore[union-attr]
    # Once the first CA is gone, the lock goes with it: a second CA may take the record over.
    with started_ca(tmp_path / "second", "--record", url) as second_ca:
        assert second_ca.process is not None and second_ca.process.poll() is None


def test_relative_sqlite_url_is_locked_by_its_absolute_file(tmp_path: Path) -> None:
    """The lock names the file, not the URL's spelling: `sqlite:///abs` and the same file
    through another spelling (`..` in the path) are one record."""
    record = tmp_path / "shared" / "record.db"
    record.parent.mkdir(mode=0o700)
    other_spelling = tmp_path / "shared" / ".." / "shared" / "record.db"
    with started_ca(tmp_path / "first", "--record", f"sqlite:///{record}"):
        second = serve_once(tmp_path / "second", "--record", f"sqlite:///{other_spelling}")
        assert second.returncode == 2, second.stderr
        assert "is in use by another CA" in second.stderr
