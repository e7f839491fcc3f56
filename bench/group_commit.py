"""Measure the issuance record's write throughput with and without group commit.

    .venv/bin/python -m bench.group_commit [--callers 32] [--per-caller 60]

Records certificates from many coroutines at once through `AsyncRecorder`, as a CA
worker does: grouped with the CA's default linger, grouped without, and ungrouped
(max_batch 1: one transaction and one fsync per certificate), on SQLite and on a
throwaway PostgreSQL cluster. Prints certificates/s and the ratios; asserts nothing
(numbers depend on the disk). The linger costs throughput here, where committing is
all there is to do; in the CA it saves CPU (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ca_server.options import default
from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger import RecorderOptions, open_reader, open_recorder
from ca_server.record.ledger.async_recorder import AsyncRecorder
from tests.support.postgres import start_postgres
from tests.support.record_entries import make_entry

LINGER_S = default("record_linger").total_seconds()


def measure(
    url: str, *, max_batch: int, linger_s: float, callers: int, per_caller: int
) -> tuple[float, float]:
    """(certificates/s, mean certificates per commit) for one run."""
    managed = open_recorder(url, options=RecorderOptions(max_batch=max_batch))
    work: list[list[IssuedCertificate]] = [
        [make_entry(service_account=f"sa{c}") for _ in range(per_caller)] for c in range(callers)
    ]

    async def run() -> float:
        recorder = AsyncRecorder(managed, linger_s=linger_s)

        async def caller(entries: list[IssuedCertificate]) -> None:
            for entry in entries:
                await recorder.record(entry)

        started = time.perf_counter()
        await asyncio.gather(*(caller(w) for w in work))
        elapsed = time.perf_counter() - started
        await recorder.close()
        return elapsed

    elapsed = asyncio.run(run())
    writer = managed.writer
    assert open_reader(url).verify().ok
    return callers * per_caller / elapsed, writer.rows / max(writer.commits, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--per-caller", type=int, default=60)
    args = parser.parse_args()
    cluster = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends: dict[str, Callable[[int], str]] = {
                "sqlite": lambda i: f"sqlite:///{Path(tmp) / f'bench{i}.db'}",
                "postgresql": lambda i: cluster.database("bench"),
            }
            print(f"{args.callers} callers x {args.per_caller} certificates each")
            for name, make_url in backends.items():
                runs = {
                    label: measure(
                        make_url(i),
                        max_batch=max_batch,
                        linger_s=linger_s,
                        callers=args.callers,
                        per_caller=args.per_caller,
                    )
                    for i, (label, max_batch, linger_s) in enumerate(
                        (
                            (f"grouped, {LINGER_S * 1e3:g} ms linger", 256, LINGER_S),
                            ("grouped, no linger", 256, 0.0),
                            ("ungrouped", 1, 0.0),
                        )
                    )
                }
                base = runs["ungrouped"][0]
                for label, (rate, per_commit) in runs.items():
                    print(
                        f"{name:<11} {label:<24} {rate:8.0f} certs/s"
                        f"  {per_commit:5.1f} per commit  {rate / base:5.1f}x ungrouped"
                    )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
