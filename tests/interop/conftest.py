"""Fixtures for the drop-in proof with Istio's own code (`make test-interop`).

The tests run Istio's citadel CA client (through our thin `istio-csr` main) and the real
`pilot-agent` against a real Bulwark CA. Both binaries are built from the Go module registry
by build-istio.sh into a cache outside the repo, so the default `make test` leaves these tests
out; `make test-interop` sets BULWARK_INTEROP_TESTS=1. When selected, a binary that cannot be
built, or a peer that does not start, fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca_process import RunningCa, start_ca
from tests.support.interop import IstioBinaries, istio_binaries

if os.environ.get("BULWARK_INTEROP_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def istio() -> IstioBinaries:
    """istio-csr and pilot-agent, built (or reused from the cache) once per run."""
    return istio_binaries()


@pytest.fixture(scope="module")
def strict_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    """A CA on the embedded token issuer with the strict CSR policy (Bulwark's default)."""
    ca = start_ca(tmp_path_factory.mktemp("strict") / "ca", "--csr-san-policy", "strict")
    try:
        yield ca
    finally:
        ca.stop()


@pytest.fixture(scope="module")
def override_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    """A CA with Istio's behaviour: the caller's identity regardless of the CSR's SANs."""
    ca = start_ca(tmp_path_factory.mktemp("override") / "ca", "--csr-san-policy", "override")
    try:
        yield ca
    finally:
        ca.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """Where a test writes the workload's token (0600, like a projected token)."""
    return tmp_path / "istio-token"
