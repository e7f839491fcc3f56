"""Fixtures shared by every suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import short_dir
from tests.support.ca_process import RunningCa, started_ca
from tests.support.postgres import PostgresCluster, start_postgres

TRUSTED_NODE_ACCOUNT = "istio-system/ztunnel"


@pytest.fixture(scope="session", autouse=True)
def _require_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.fail(
            "the openssl binary is required (Debian package openssl); `make test` installs it"
        )


@pytest.fixture
def running_ca(tmp_path: Path) -> Iterator[RunningCa]:
    """A real CA process on loopback with the embedded token issuer, one worker."""
    with started_ca(tmp_path / "ca") as ca:
        yield ca


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    """A real CA shared by the tests of one module (those that do not stop it), trusting
    istio-system/ztunnel to impersonate demo/* (the CA and agent suites had a copy each)."""
    data_dir = tmp_path_factory.mktemp("shared") / "ca"
    # Without Kubernetes a node account impersonates only what --node-identity-policy lists.
    policy = data_dir.parent / "node-identity-policy.yaml"
    policy.write_text(f'{{"{TRUSTED_NODE_ACCOUNT}": ["demo/*"]}}\n')
    with started_ca(
        data_dir,
        "--trusted-node-accounts",
        TRUSTED_NODE_ACCOUNT,
        "--node-identity-policy",
        str(policy),
    ) as ca:
        yield ca


@pytest.fixture
def work() -> Iterator[Path]:
    """A per-test directory with a short path, for unix sockets (at most 108 bytes)."""
    with short_dir() as path:
        yield path


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the session (the Debian package; `make test` installs it)."""
    cluster = start_postgres()  # raises (test error) if PostgreSQL is not installed
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def record_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty record on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'record.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.database()
