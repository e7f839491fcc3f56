"""Crash consistency: SIGKILL the CA under load; every certificate a client got is recorded.

A load driver in a subprocess keeps asking a 2-worker CA for certificates while
the test kills the CA (supervisor and workers) with SIGKILL at random moments,
checks the record, and restarts the CA on the same ports. Runs on SQLite and on
a real PostgreSQL server.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.support.ca_process import start_ca
from tests.support.load import Load
from tests.support.postgres import PostgresCluster
from tests.support.record_processes import recorded_serials, sigkill_ca, verify

KILLS = 5


def check_record(url: str, driver: Load, label: str) -> int:
    received = driver.received()
    recorded = recorded_serials(url)
    missing = set(received) - set(recorded)
    assert not missing, f"{label}: {len(missing)} certificates sent but not recorded"
    assert len(recorded) == len(set(recorded)), f"{label}: duplicated rows"
    report = verify(url)
    assert report.ok, f"{label}: chain broken: {report.broken}"
    # Compare the chain with a read taken after it: seen once in several SQLite runs, a row
    # committed by a request killed mid-answer was visible to the verifier but not to the
    # earlier serial read; such a row is never one a client received.
    settled = recorded_serials(url)
    assert report.rows_checked == len(settled), f"{label}: chain and table disagree"
    assert set(recorded) <= set(settled)
    return len(received)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_no_issued_certificate(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'record.db'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.database("crash")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ca = start_ca(tmp_path / "ca", "--record", url, workers=2)
    driver = Load(ca, tmp_path)
    try:
        issued = 0
        for kill in range(KILLS):
            driver.wait_for(issued + 25)  # load is flowing through this incarnation
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment, mid-request somewhere
            sigkill_ca(ca)
            issued = check_record(url, driver, f"after kill {kill + 1} (seed {seed})")
            ca.restart()
        driver.wait_for(issued + 25)
        driver.stop()
        ca.stop()
        total = check_record(url, driver, f"at the end (seed {seed})")
        assert total > issued
    finally:
        driver.stop()
        ca.stop()
