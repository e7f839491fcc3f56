"""Shared by the adversarial tables: every process log they watch is checked for tracebacks.

A table registers a log with `watched_logs.append(path)`; at the end of the session every
registered log is read and the run fails if any holds a traceback through project code
(an input reached an unexpected exception), whichever table produced it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_FRAME = re.compile(r'File "[^"]*/(ca_server|certs|agent)/[^"]*\.py", line \d+')


def tracebacks_through_project(text: str) -> list[str]:
    """Each traceback in `text` that passes through a project module (its first 800 chars)."""
    found = []
    for block in text.split("Traceback (most recent call last):")[1:]:
        if PROJECT_FRAME.search(block[:20_000]):
            found.append(block[:800])
    return found


@pytest.fixture(scope="session")
def watched_logs() -> Iterator[list[Path]]:
    logs: list[Path] = []
    yield logs
    problems = {
        str(path): tracebacks_through_project(path.read_text(errors="replace"))
        for path in logs
        if path.exists()
    }
    problems = {path: found for path, found in problems.items() if found}
    if problems:
        pytest.fail(f"tracebacks through project code in process logs: {problems}")
