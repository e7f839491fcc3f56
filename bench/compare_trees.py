"""A/B the CA issuance bench between source trees, interleaved in one run.

    .venv/bin/python -m bench.compare_trees A=/tmp/base B=. [--rounds 3] [-c 32]
    .venv/bin/python -m bench.compare_trees w2=. w1=.,--workers=1   # flags after commas
    .venv/bin/python -m bench.compare_trees a=. b=.,env:GRPC_POLL_STRATEGY=poll  # env

Each tree is a directory holding `ca_server`, `certs` and `protos` (e.g. `git archive`
of another commit); its CA runs as `python -m ca_server` from that directory, with the
same workloads, flags and load as `make bench` (2 workers, TLS, JWT, SQLite record).
Rounds alternate the trees so machine noise hits both alike; the medians and the
ratios to the first tree are printed. For iterating on performance, not for CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.ca_bench import run_loadgen
from bench.workloads import make_workloads, save

FIGURES = ("server_cpu_us_per_cert", "certs_per_s", "server_switches_per_cert")


def start_tree_ca(
    tree: Path, data_dir: Path, workers: int, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the CA of `tree` with the flags in `extra` (`env:KEY=VALUE` items set its
    environment); return the process and its gRPC address once it serves."""
    ready = data_dir.parent / f"{data_dir.name}-ready.json"
    ready.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "ca_server", "--data-dir", str(data_dir),
        "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--mtls-grpc-addr", "",
        "--ready-file", str(ready), "--workers", str(workers),
        *(x for x in extra if not x.startswith("env:")),
    ]  # fmt: skip
    env = dict(os.environ)
    env.update(x[4:].split("=", 1) for x in extra if x.startswith("env:"))  # type: ignore[misc]
    log = open(data_dir.parent / f"{tree.name or 'tree'}-ca.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=tree, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the CA of {tree} did not start")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["grpc_addr"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    for pid in procstat.descendants(proc.pid)[1:]:
        os.kill(pid, signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs="+", help="NAME=DIR")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-c", "--concurrency", type=int, action="append")
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    # DIR,--flag,value,env:KEY=V1,V2: split at commas that start a flag or an env item
    specs = {n: re.split(r",(?=--|env:)", d) for n, d in (t.split("=", 1) for t in args.trees)}
    trees = {n: (Path(d[0]).resolve(), d[1:]) for n, d in specs.items()}
    concurrencies = args.concurrency or [32]
    work = Path(tempfile.mkdtemp(prefix="bwab-", dir="/tmp"))
    data_dir = work / "bulwark"
    wl_file = work / "workloads.json"
    save(make_workloads(data_dir, 1000), wl_file)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for name, (tree, extra) in order:
            proc, addr = start_tree_ca(tree, data_dir, args.workers, *extra)
            try:
                for c in concurrencies:
                    run = run_loadgen(
                        "grpc", addr, proc.pid, wl_file, concurrency=c,
                        root=data_dir / "root-cert.pem", duration_s=args.duration_s,
                    )  # fmt: skip
                    run.pop("latencies_ms")
                    results.setdefault((name, c), []).append(run)
                    print(
                        f"round {r} {name:>8} c={c:<4}"
                        + "".join(f" {f}={run[f]:.1f}" for f in FIGURES)
                        + f" failures={run['failures']}",
                        flush=True,
                    )
            finally:
                stop(proc)
    first = next(iter(trees))
    for c in concurrencies:
        base = {f: statistics.median(x[f] for x in results[(first, c)]) for f in FIGURES}
        for name in trees:
            med = {f: statistics.median(x[f] for x in results[(name, c)]) for f in FIGURES}
            print(
                f"median c={c:<4} {name:>8}"
                + "".join(f" {f}={med[f]:.1f} ({med[f] / base[f]:.2f}x)" for f in FIGURES)
            )


if __name__ == "__main__":
    main()
