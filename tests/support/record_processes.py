"""Process helpers for end-to-end record tests: kill a CA's whole tree, read its record."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ca_server.record.ledger import LedgerReader, VerifyReport, parse_record_url
from ca_server.record.ledger.dialects import connect
from tests.support.ca_process import RunningCa


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sigkill_ca(ca: RunningCa) -> None:
    """SIGKILL the CA supervisor and all its workers at once, as a node crash would."""
    assert ca.process is not None
    victims = [ca.process.pid, *descendants(ca.process.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ca.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in victims[1:]):
        assert time.monotonic() < deadline, "CA workers survived SIGKILL"
        time.sleep(0.02)


def recorded_serials(url: str) -> list[str]:
    session = connect(parse_record_url(url))
    try:
        return [str(row[0]) for row in session.query("SELECT serial FROM certificates")]
    finally:
        session.close()


def verify(url: str) -> VerifyReport:
    reader = LedgerReader(parse_record_url(url))
    try:
        return reader.verify()
    finally:
        reader.close()
