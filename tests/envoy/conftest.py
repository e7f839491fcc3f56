"""Fixtures of the Envoy suite: a per-test `Mesh` of real agents and real Envoys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.agent.support import short_dir
from tests.envoy.mesh import Mesh
from tests.support.ca_process import RunningCa


@pytest.fixture
def work() -> Iterator[Path]:
    """A per-test directory with a short path, for the agents' unix sockets."""
    with short_dir() as path:
        yield path


@pytest.fixture
def mesh(shared_ca: RunningCa, work: Path) -> Iterator[Mesh]:
    with ExitStack() as stack:
        yield Mesh(shared_ca, work, stack)
