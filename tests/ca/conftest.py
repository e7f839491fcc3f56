"""A CA shared by the tests of one module, to keep the suite fast."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.ca_process import RunningCa, start_ca


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    ca = start_ca(
        tmp_path_factory.mktemp("shared") / "ca", "--trusted-node-accounts", "istio-system/ztunnel"
    )
    try:
        yield ca
    finally:
        ca.stop()


def metric(ca: RunningCa, name: str, labels: str = "") -> float:
    """One sample of the CA's /metrics, 0 when absent."""
    text = urllib.request.urlopen(f"{ca.admin_url}/metrics", timeout=5).read().decode()
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
