"""Two CA processes (two workers each) sharing one PostgreSQL record: nothing lost, nothing doubled."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from ca_server.record.ledger.database import parse_record_url
from ca_server.record.ledger.dialects import connect
from tests.support.ca_process import start_ca
from tests.support.load import Load
from tests.support.postgres import PostgresCluster
from tests.support.record_processes import verify


@pytest.mark.slow
def test_two_cas_share_one_postgres_record(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    url = postgres_cluster.database("shared")
    cas = [start_ca(tmp_path / f"ca{i}", "--record", url, workers=2) for i in range(2)]
    drivers = [Load(ca, tmp_path, threads=6) for ca in cas]
    try:
        for driver in drivers:
            driver.wait_for(200)
    finally:
        for driver in drivers:
            driver.stop()
        for ca in cas:
            ca.stop()
    received = [s for d in drivers for s in d.received()]
    session = connect(parse_record_url(url))
    rows = session.query("SELECT serial, issuer_serial FROM certificates ORDER BY seq")
    session.close()
    recorded = Counter(str(r[0]) for r in rows)
    assert not [s for s, n in recorded.items() if n > 1], "duplicated rows"
    assert set(received) == set(recorded), "lost rows, or rows for certificates never sent"
    assert len(received) == len(rows)
    assert len({r[1] for r in rows}) == 2, "both CAs wrote to the record"
    switches = sum(1 for a, b in itertools.pairwise(rows) if a[1] != b[1])
    assert switches > 2, "the two CAs' rows should interleave in one chain"
    report = verify(url)
    assert report.ok and report.rows_checked == len(rows), report
