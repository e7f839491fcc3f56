"""Fixtures of the rotation suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.support import short_dir


@pytest.fixture
def work() -> Iterator[Path]:
    """A per-test directory with a short path, for the agents' unix sockets."""
    with short_dir() as path:
        yield path
