"""`make bench`: every benchmark of issue 6 in one run, results in tests/bench/results/.

Order: crypto limit, Bulwark CA and cfssl at each concurrency, agent, rotation storm,
thundering herd. Each figure is printed with the baseline measured in this same run.
BENCH_QUICK=1 shortens every phase (for trying the harness, not for results).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

QUICK = os.environ.get("BENCH_QUICK") == "1"
CONCURRENCIES = [8, 32, 128]
HEADLINE_CONCURRENCY = 32
CA_WINDOW_S = 4.0 if QUICK else 10.0
STORM_WORKLOADS, STORM_DURATION_S, STORM_TTL_S = (300, 40.0, 20) if QUICK else (2000, 180.0, 60)
HERD_WORKLOADS = 3000 if QUICK else 20_000
HERD_MAX_CONCURRENT_RPCS = 500  # per worker: beyond it callers get RESOURCE_EXHAUSTED at once
HERD_RSS_BOUND_MB = 600  # supervisor + both workers
HERD_TIME_BOUND_S = 120.0
RESULTS = REPO / "tests" / "bench" / "results"


def log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "ca_server", "certs", "agent"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    from tests.bench.report import pct

    lat = run.pop("latencies_ms")
    run.update(p50_ms=pct(lat, 0.5), p99_ms=pct(lat, 0.99), max_ms=max(lat) if lat else None)
    return run


def cfssl_binary() -> Path:
    script = REPO / "tests" / "bench" / "build_cfssl.sh"
    out = subprocess.run(
        ["bash", str(script)], check=True, capture_output=True, text=True, timeout=900
    )
    return Path(out.stdout.strip().splitlines()[-1])


def breakdown(work: Path, workloads: list[Any]) -> dict[str, Any]:
    from tests.bench import ca_bench, floor, procstat
    from tests.bench.workloads import save

    proc, addr, root = floor.start_bare_grpc(work)
    try:
        wl_file = work / "workloads.json"
        save(workloads, wl_file)
        bare = summarize(
            ca_bench.run_loadgen(
                "grpc",
                addr,
                proc.pid,
                wl_file,
                concurrency=HEADLINE_CONCURRENCY,
                root=root,
                duration_s=CA_WINDOW_S / 2,
            )
        )
    finally:
        for pid in procstat.descendants(proc.pid)[1:]:
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
    return {
        "bare_grpc_us_per_call": bare["server_cpu_us_per_cert"],
        "bare_grpc_calls_per_s": bare["certs_per_s"],
        "bare_grpc_switches_per_call": bare["server_switches_per_cert"],
        "inprocess_issue_us": floor.inprocess_issue_us(workloads, work / "bulwark"),
        "record_us": floor.record_us(),
    }


def main() -> int:
    from tests.bench import agent_bench, ca_bench, fleet_bench, report
    from tests.bench.workloads import make_workloads
    from tests.support.ca_process import start_ca

    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bwb-", dir="/tmp"))
    r: dict[str, Any] = {
        "machine": machine(),
        "commit": commit(),
        "started_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "headline_concurrency": HEADLINE_CONCURRENCY,
        "quick": QUICK,
    }
    latencies: dict[str, list[float]] = {}
    try:
        log("building cfssl (cached after the first run)")
        cfssl = cfssl_binary()
        log("making 1,000 workloads (ECDSA P-256 key, CSR, RS256 token each)")
        workloads = make_workloads(work / "bulwark", 1000)
        log("crypto limit")
        r["crypto_limit"] = ca_bench.crypto_limit_us(workloads)
        log(f"Bulwark CA (2 workers, TLS, JWT, SQLite record) at c={CONCURRENCIES}")
        ca_runs = ca_bench.bench_bulwark(
            work,
            workloads,
            CONCURRENCIES,
            CA_WINDOW_S,
            profile_to=RESULTS / "ca-worker-profile.svg",
        )
        for run in ca_runs:
            latencies[f"Bulwark c={run['concurrency']}"] = list(run["latencies_ms"])
        r["ca_runs"] = [summarize(x) for x in ca_runs]
        log(f"cfssl {cfssl.parent.parent.name} serve at c={CONCURRENCIES}")
        cf_runs = ca_bench.bench_cfssl(cfssl, work, workloads, CONCURRENCIES, CA_WINDOW_S)
        for run in cf_runs:
            latencies[f"cfssl c={run['concurrency']}"] = list(run["latencies_ms"])
        r["cfssl_runs"] = [summarize(x) for x in cf_runs]
        r["cfssl_uri_san"] = ca_bench.cfssl_writes_uri_san(cfssl, work, workloads[0])
        log("profile of the remainder: bare gRPC server, in-process request path, record alone")
        r["floor"] = breakdown(work, workloads)
        head = next(x for x in r["ca_runs"] if x["concurrency"] == HEADLINE_CONCURRENCY)
        cf_head = next(x for x in r["cfssl_runs"] if x["concurrency"] == HEADLINE_CONCURRENCY)
        r.update(
            ca_cpu_us_per_cert=head["server_cpu_us_per_cert"],
            crypto_limit_us_per_cert=r["crypto_limit"]["total_us"],
            cfssl_cpu_us_per_cert=cf_head["server_cpu_us_per_cert"],
            ca_certs_per_s=head["certs_per_s"],
            ca_p99_ms=head["p99_ms"],
            cfssl_certs_per_s=cf_head["certs_per_s"],
            cfssl_p99_ms=cf_head["p99_ms"],
        )
        log("agent: start to first SDS certificate, RSS, idle CPU, push latency")
        ca = start_ca(work / "agent-ca", "--mtls-grpc-addr", "", workers=1)
        try:
            agent = agent_bench.bench_agent(
                ca,
                work / "agent",
                starts=3 if QUICK else 7,
                idle_s=3 if QUICK else 10,
                watch_s=15 if QUICK else 40,
            )
        finally:
            ca.stop()
        r["agent"] = agent
        r.update(
            agent_rss_mb=agent["rss_mb"],
            agent_anon_mb=agent["anon_mb"],
            agent_floor_rss_mb=agent["floor_rss_mb"],
            agent_first_cert_s_p50=agent["first_cert_s_p50"],
            agent_push_p99_ms=agent["push_p99_ms"],
            agent_idle_cpu_pct=agent["idle_cpu_pct"],
        )
        log(
            f"rotation storm: {STORM_WORKLOADS} workloads, TTL {STORM_TTL_S} s, {STORM_DURATION_S:.0f} s"
        )
        storm = fleet_bench.run_fleet(
            "storm", work, STORM_WORKLOADS, duration_s=STORM_DURATION_S, ttl_s=STORM_TTL_S
        )
        r.update(
            storm=storm,
            storm_failed_rotations=storm["failed_rotations"],
            storm_ttl_s=STORM_TTL_S,
            storm_duration_s=STORM_DURATION_S,
        )
        log(
            f"thundering herd: {HERD_WORKLOADS} CSRs at once, "
            f"--max-concurrent-rpcs {HERD_MAX_CONCURRENT_RPCS} per worker"
        )
        herd = fleet_bench.run_fleet(
            "herd",
            work,
            HERD_WORKLOADS,
            duration_s=HERD_TIME_BOUND_S + 60,
            ca_args=("--max-concurrent-rpcs", str(HERD_MAX_CONCURRENT_RPCS)),
        )
        r.update(
            herd=herd,
            herd_max_rss_mb=herd["server_max_rss_mb"],
            herd_all_succeeded_s=herd["all_succeeded_s"],
            herd_rss_bound_mb=HERD_RSS_BOUND_MB,
            herd_time_bound_s=HERD_TIME_BOUND_S,
        )
        log(
            f"thundering herd again with a queue for everyone: --max-concurrent-rpcs "
            f"{HERD_WORKLOADS // 2} per worker"
        )
        r["herd_queue_all"] = fleet_bench.run_fleet(
            "herd",
            work,
            HERD_WORKLOADS,
            duration_s=HERD_TIME_BOUND_S + 60,
            ca_args=("--max-concurrent-rpcs", str(HERD_WORKLOADS // 2)),
        )
        r["total_s"] = time.monotonic() - t_start
        md = report.write(RESULTS, r, latencies)
        print(md)
        log(f"done in {r['total_s']:.0f} s; results in {RESULTS.relative_to(REPO)}/")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
