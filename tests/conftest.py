"""Fixtures shared by every suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca_process import RunningCa, start_ca


@pytest.fixture(scope="session", autouse=True)
def _require_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.fail(
            "the openssl binary is required (Debian package openssl); `make test` installs it"
        )


@pytest.fixture
def running_ca(tmp_path: Path) -> Iterator[RunningCa]:
    """A real CA process on loopback with the embedded token issuer, one worker."""
    ca = start_ca(tmp_path / "ca")
    try:
        yield ca
    finally:
        ca.stop()
