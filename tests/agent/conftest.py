"""Fixtures of the agent suite: one real CA process per module, short socket directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.support import short_dir
from tests.support.ca_process import RunningCa, start_ca


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    """A real CA shared by the tests of one module (those that do not stop it)."""
    ca = start_ca(tmp_path_factory.mktemp("agent-ca") / "ca")
    try:
        yield ca
    finally:
        ca.stop()


@pytest.fixture
def work() -> Iterator[Path]:
    """A per-test directory with a short path, for unix sockets."""
    with short_dir() as path:
        yield path
