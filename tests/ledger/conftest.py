"""Fixtures: a session-wide throwaway PostgreSQL cluster and a record URL per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresCluster, start_postgres


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
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
