"""Filters and paging on a 10,000-certificate record are exact; each query's time is printed.

Times are measured and reported, never asserted (they depend on the machine).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from ca_server.admin import CaCertificates, build_admin_router
from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger import open_reader
from ca_server.record.ledger.append import append_batch
from ca_server.record.ledger.dialects import connect
from ca_server.record.ledger.recorder import prepare
from tests.support.http_server import serve
from tests.support.postgres import PostgresCluster
from tests.support.record_entries import BASE_TIME, make_entry
from tests.support.record_material import roots_and_intermediate

ROWS = 10_000
NOW = BASE_TIME + timedelta(days=2)


def entry(i: int) -> IssuedCertificate:
    """Row i: 10 namespaces, 7 service accounts, expiries from 500 min ago to 1490 min ahead."""
    return make_entry(
        namespace=f"ns{i % 10}",
        service_account=f"sa{i % 7}",
        not_after=NOW + timedelta(minutes=10 * (i % 200 - 50)),
    )


@dataclass
class Dataset:
    backend: str
    base_url: str
    entries: list[IssuedCertificate]  # index i has seq i + 1
    timings: list[tuple[str, int, float]]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dataset]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('q') / 'record.db'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.database("queries")
    entries = [entry(i) for i in range(ROWS)]
    session = connect(prepare(url))
    for start in range(0, ROWS, 1000):
        append_batch(session, entries[start : start + 1000], recorded_at=BASE_TIME)
    if request.param == "postgresql":
        session.execute("ANALYZE certificates")
    session.close()
    roots, _ = roots_and_intermediate()
    app = FastAPI()
    reader = open_reader(url, clock=lambda: NOW)
    app.include_router(
        build_admin_router(
            reader=reader,
            ca_certificates=lambda: CaCertificates(roots=tuple(roots)),
            csr_policy="strict",
            authenticators=["jwt"],
            admin_token=None,
            loopback=True,
            clock=lambda: NOW,
        )
    )
    data = Dataset(request.param, "", entries, [])
    with serve(app) as port:
        data.base_url = f"http://127.0.0.1:{port}"
        fetch(data, "/v1/certificates", {"limit": 1})  # warm up: first request builds models
        yield data
    reader.close()
    report(request, data)


def report(request: pytest.FixtureRequest, data: Dataset) -> None:
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[record queries on {ROWS} rows, {data.backend}] HTTP round trip per page:")
        for name, pages, slowest in data.timings:
            print(f"  {name:<48} {pages:>3} page(s), slowest {slowest * 1000:6.1f} ms")


def fetch(data: Dataset, path: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """GET JSON with a fresh connection, as `bulwark certs` does; return it and the seconds taken."""
    url = f"{data.base_url}{path}?{urllib.parse.urlencode(params)}"
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.loads(response.read())
    return body, time.perf_counter() - started


def page_all(data: Dataset, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Follow next_cursor to the end, timing each request."""
    items: list[dict[str, Any]] = []
    cursor, pages, slowest = None, 0, 0.0
    while True:
        query = {**params, "cursor": cursor} if cursor else params
        body, took = fetch(data, "/v1/certificates", query)
        slowest = max(slowest, took)
        items.extend(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    data.timings.append((name, pages, slowest))
    return items


def expected(data: Dataset, keep: Callable[[IssuedCertificate], bool]) -> list[str]:
    """Serials matching `keep`, newest (highest seq) first."""
    return [e.serial for e in reversed(data.entries) if keep(e)]


QUERIES: list[tuple[str, dict[str, Any], Callable[[IssuedCertificate], bool]]] = [
    ("everything, limit 1000", {"limit": 1000}, lambda e: True),
    (
        "namespace=ns3, limit 250",
        {"namespace": "ns3", "limit": 250},
        lambda e: e.namespace == "ns3",
    ),
    (
        "namespace=ns4 service_account=sa2",
        {"namespace": "ns4", "service_account": "sa2"},
        lambda e: (e.namespace, e.service_account) == ("ns4", "sa2"),
    ),
    (
        "spiffe_id=.../ns/ns5/sa/sa5",
        {"spiffe_id": "spiffe://cluster.local/ns/ns5/sa/sa5", "limit": 50},
        lambda e: e.spiffe_id == "spiffe://cluster.local/ns/ns5/sa/sa5",
    ),
    ("state=active, limit 1000", {"state": "active", "limit": 1000}, lambda e: e.not_after > NOW),
    (
        "state=expired, limit 1000",
        {"state": "expired", "limit": 1000},
        lambda e: e.not_after <= NOW,
    ),
    (
        "expiring_within=2h",
        {"expiring_within": "2h", "limit": 100},
        lambda e: NOW < e.not_after <= NOW + timedelta(hours=2),
    ),
    (
        "namespace=ns1 expiring_within=1h30m",
        {"namespace": "ns1", "expiring_within": "1h30m"},
        lambda e: e.namespace == "ns1" and NOW < e.not_after <= NOW + timedelta(minutes=90),
    ),
    (
        "namespace=ns2 state=expired",
        {"namespace": "ns2", "state": "expired", "limit": 77},
        lambda e: e.namespace == "ns2" and e.not_after <= NOW,
    ),
    ("no match", {"namespace": "nope"}, lambda e: False),
]


@pytest.mark.parametrize(("name", "params", "keep"), QUERIES, ids=[q[0] for q in QUERIES])
def test_filters_and_paging_are_exact(
    dataset: Dataset, name: str, params: dict[str, Any], keep: Callable[[IssuedCertificate], bool]
) -> None:
    got = [item["serial"] for item in page_all(dataset, name, params)]
    want = expected(dataset, keep)
    assert len(got) == len(set(got)), "a row was returned twice across pages"
    assert got == want


def test_lookup_by_serial(dataset: Dataset) -> None:
    slowest = 0.0
    for i in range(0, ROWS, 997):
        body, took = fetch(dataset, f"/v1/certificates/{dataset.entries[i].serial}", {})
        slowest = max(slowest, took)
        assert body["seq"] == i + 1
    dataset.timings.append(("get by serial (11 lookups)", 11, slowest))


def test_verify_whole_record(dataset: Dataset) -> None:
    body, took = fetch(dataset, "/v1/record/verify", {})
    dataset.timings.append(("verify the whole chain", 1, took))
    assert body["ok"] and body["rows_checked"] == ROWS
