"""Measure the issuance record's write throughput with and without group commit.

    .venv/bin/python -m tests.ledger.bench_group_commit [--threads 32] [--per-thread 60]

Records certificates from many threads at once through `open_recorder`, first
with grouping on (max_batch 256) then off (max_batch 1, one transaction and
one fsync per certificate), on SQLite and on a throwaway PostgreSQL cluster.
Prints certificates/s and the ratio; asserts nothing (numbers depend on the disk).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from ca_server.ledger import RecorderOptions, open_reader, open_recorder
from ca_server.record import IssuedCertificate
from tests.ledger.entries import make_entry
from tests.support.postgres import start_postgres


def measure(url: str, *, max_batch: int, threads: int, per_thread: int) -> tuple[float, float]:
    """(certificates/s, mean certificates per commit) for one run."""
    recorder = open_recorder(url, options=RecorderOptions(max_batch=max_batch))
    work: list[list[IssuedCertificate]] = [
        [make_entry(service_account=f"sa{t}") for _ in range(per_thread)] for t in range(threads)
    ]
    barrier = threading.Barrier(threads + 1)

    def run(entries: list[IssuedCertificate]) -> None:
        barrier.wait()
        for entry in entries:
            recorder.record(entry)

    pool = [threading.Thread(target=run, args=(w,)) for w in work]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    writer = recorder.writer
    recorder.close()
    assert open_reader(url).verify().ok
    return threads * per_thread / elapsed, writer.rows / max(writer.commits, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-thread", type=int, default=60)
    args = parser.parse_args()
    cluster = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends = {
                "sqlite": lambda i: f"sqlite:///{Path(tmp) / f'bench{i}.db'}",
                "postgresql": lambda i: cluster.database("bench"),
            }
            print(f"{args.threads} threads x {args.per_thread} certificates each")
            for name, make_url in backends.items():
                on, batch = measure(
                    make_url(0), max_batch=256, threads=args.threads, per_thread=args.per_thread
                )
                off, _ = measure(
                    make_url(1), max_batch=1, threads=args.threads, per_thread=args.per_thread
                )
                print(
                    f"{name:<11} grouped {on:8.0f} certs/s (mean {batch:5.1f} per commit)"
                    f"  ungrouped {off:8.0f} certs/s  ratio {on / off:5.1f}x"
                )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
