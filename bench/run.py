"""`make bench`: Bulwark against the code users would otherwise run (issue 18), same run.

Phases, in order:
  ca     the crypto limit; Bulwark's CA, Istio's own CA (bench/istio-ca, built by
         build-istio-ca.sh) and cfssl under the same load generator at c=8, 32, 128, and
         Bulwark's BatchCreateCertificates (4 node agents, 32 per call), interleaved over 3
         rounds (medians and min-max); py-spy profiles of a worker (per call, batch); the
         floor breakdown (bare grpc.aio server, in-process request path, record alone).
  hsm    the same CA with its key in SoftHSM2 vs a key file, interleaved at c=32, and one
         signature inside SoftHSM2 on its own (issue 24).
  agent  Bulwark's agent and pilot-agent (tests/interop/build-istio.sh; Envoy replaced by the
         interop stand-in), starts interleaved, against the same Bulwark CA: RSS after the first
         certificate, start to first SDS certificate; then our agent's idle CPU and SDS push
         latency.
  node   the node agent (issue 23): 100 pods of 20 accounts held by one node agent (RSS, all
         served after its start), a new pod's first certificate (bench/node_bench.py).
  fleet  rotation storm and thundering herd (twice: RPC limit, then a queue for everyone).
Every goal is printed with its ratio and met / not met / not measured at the end.

Environment:
  BENCH_QUICK=1        short windows and fleets, to try the harness (not for results)
  BENCH_ONLY=ca|hsm|agent|node|fleet   run only that phase (comma-separated for several)
  BENCH_OUT=DIR        where latest.json / latest.md / the charts go. Default: bench/results
                       for a full-length run of every phase; otherwise /tmp/bulwark-bench-<kind>
                       (a quick or partial run never overwrites the committed results)
  BULWARK_ISTIO_CA_BIN, BULWARK_ISTIO_BIN   ready binary directories (skip the Go builds)
"""

from __future__ import annotations

import functools
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

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

QUICK = os.environ.get("BENCH_QUICK") == "1"
PHASES = ("ca", "hsm", "agent", "node", "fleet")
CONCURRENCIES = [8, 32, 128]
HEADLINE_CONCURRENCY = 32
# The batch call (issue 23): a few node agents, each sending BatchCreateCertificates of 32.
BATCH_SIZE = 32
BATCH_CALLERS = 4
ROUNDS = 3
CA_WINDOW_S = 2.5 if QUICK else 10.0
AGENT_STARTS = 3 if QUICK else 7
STORM_WORKLOADS, STORM_DURATION_S, STORM_TTL_S = (300, 40.0, 20) if QUICK else (2000, 180.0, 60)
HERD_WORKLOADS = 3000 if QUICK else 20_000
HERD_MAX_CONCURRENT_RPCS = 500  # per worker: beyond it callers get RESOURCE_EXHAUSTED at once
HERD_RSS_BOUND_MB = 600  # supervisor + both workers
HERD_TIME_BOUND_S = 120.0
RESULTS = REPO / "bench" / "results"


def log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def selected_phases(only: str) -> list[str]:
    """The phases BENCH_ONLY names (all when empty); an unknown name is an error."""
    if not only.strip():
        return list(PHASES)
    names = [x.strip() for x in only.split(",") if x.strip()]
    unknown = [x for x in names if x not in PHASES]
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown phase {unknown}; choose from {', '.join(PHASES)}")
    return [p for p in PHASES if p in names]


def output_dir(phases: list[str]) -> Path:
    given = os.environ.get("BENCH_OUT")
    if given:
        return Path(given)
    if not QUICK and phases == list(PHASES):
        return RESULTS
    kind = ("quick-" if QUICK else "") + "-".join(phases)
    return Path(tempfile.gettempdir()) / f"bulwark-bench-{kind}"


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


def cfssl_binary() -> Path:
    script = REPO / "bench" / "build_cfssl.sh"
    out = subprocess.run(
        ["bash", str(script)], check=True, capture_output=True, text=True, timeout=900
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _bare_server_run(work: Path, wl_file: Path, *, required_work: bool) -> dict[str, Any]:
    from bench import ca_bench, floor, procstat
    from bench.ca_compare import summarize

    proc, addr, root = floor.start_bare_grpc(work, required_work=required_work)
    try:
        return summarize(
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


def breakdown(work: Path, wl_file: Path, workloads: list[Any]) -> dict[str, Any]:
    from bench import floor

    bare = _bare_server_run(work, wl_file, required_work=False)
    required = _bare_server_run(work, wl_file, required_work=True)
    return {
        "bare_grpc_us_per_call": bare["server_cpu_us_per_cert"],
        "bare_grpc_calls_per_s": bare["certs_per_s"],
        "bare_grpc_switches_per_call": bare["server_switches_per_cert"],
        "required_work_us_per_call": required["server_cpu_us_per_cert"],
        "required_work_calls_per_s": required["certs_per_s"],
        "inprocess_issue_us": floor.inprocess_issue_us(workloads, work / "bulwark"),
        "record_us": floor.record_us(),
    }


def ca_phase(work: Path, out: Path, r: dict[str, Any], latencies: dict[str, list[float]]) -> None:
    from bench import ca_bench
    from bench.ca_compare import Server, at, interleaved
    from bench.istio_ca import istio_ca_binary, start_istio_ca
    from bench.workloads import make_workloads, save

    log("building cfssl and Istio's CA (cached after the first run)")
    cfssl, istio = cfssl_binary(), istio_ca_binary()
    log("making 1,000 workloads (ECDSA P-256 key, CSR, RS256 token each)")
    workloads = make_workloads(work / "bulwark", 1000)
    wl_file = work / "workloads.json"
    save(workloads, wl_file)
    log("crypto limit")
    r["crypto_limit"] = ca_bench.crypto_limit_us(workloads)
    ours = ca_bench.start_bulwark(work / "bulwark")
    theirs = start_istio_ca(istio, work, work / "bulwark")
    cf_proc, cf_addr = ca_bench.start_cfssl(cfssl, work)
    assert ours.process is not None
    try:
        batch_load = {
            "batch_size": BATCH_SIZE,
            "node_token_file": ca_bench.node_token_file(ours, work),
        }
        servers = [
            Server("bulwark", "grpc", ours.grpc_addr, ours.process.pid, ours.root_cert_path),
            Server("istio", "grpc", theirs.addr, theirs.pid, theirs.root),
            Server("cfssl", "cfssl", cf_addr, cf_proc.pid, None),
            Server(
                "bulwark_batch",
                "batch",
                ours.grpc_addr,
                ours.process.pid,
                ours.root_cert_path,
                only_at=HEADLINE_CONCURRENCY,
                callers=BATCH_CALLERS,
                load_args=batch_load,
            ),
        ]
        log(
            f"Bulwark CA (2 workers, TLS, JWT, SQLite record), Istio's CA, cfssl at "
            f"c={CONCURRENCIES}, and {BATCH_CALLERS} node agents sending BatchCreateCertificates "
            f"of {BATCH_SIZE} to Bulwark; {ROUNDS} interleaved rounds of {CA_WINDOW_S:g} s"
        )
        rows, lat = interleaved(
            servers, wl_file, CONCURRENCIES, rounds=ROUNDS, window_s=CA_WINDOW_S, log=log
        )
        latencies.update(lat)
        ca_bench.profile_worker(
            ours, wl_file, out / "ca-worker-profile.svg", duration_s=min(CA_WINDOW_S, 6.0)
        )
        ca_bench.profile_worker(
            ours,
            wl_file,
            out / "ca-worker-batch-profile.svg",
            duration_s=min(CA_WINDOW_S, 6.0),
            mode="batch",
            concurrency=BATCH_CALLERS,
            **batch_load,
        )
    finally:
        ours.stop()
        theirs.stop()
        cf_proc.terminate()
        cf_proc.wait(10)
    r.update(ca_runs=rows["bulwark"], istio_ca_runs=rows["istio"], cfssl_runs=rows["cfssl"])
    r.update(ca_batch_runs=rows["bulwark_batch"], batch_size=BATCH_SIZE)
    r["cfssl_uri_san"] = ca_bench.cfssl_writes_uri_san(cfssl, work, workloads[0])
    log("profile of the remainder: bare gRPC server, in-process request path, record alone")
    r["floor"] = breakdown(work, wl_file, workloads)
    r.update(
        headline_keys(
            at(rows["bulwark"], HEADLINE_CONCURRENCY),
            at(rows["istio"], HEADLINE_CONCURRENCY),
            at(rows["cfssl"], HEADLINE_CONCURRENCY),
        )
    )
    r.update(batch_keys(at(rows["bulwark_batch"], HEADLINE_CONCURRENCY)))
    r["ca_overhead_us_per_cert"] = overhead_us(r)
    r["crypto_limit_us_per_cert"] = r["crypto_limit"]["total_us"]


def batch_keys(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch call's figures latest.json carries at the top level (per certificate)."""
    return {
        "ca_batch_cpu_us_per_cert": batch.get("server_cpu_us_per_cert"),
        "ca_batch_certs_per_s": batch.get("certs_per_s"),
        "ca_batch_call_p99_ms": batch.get("p99_ms"),
    }


def overhead_us(r: dict[str, Any]) -> float | None:
    """Bulwark's own work per certificate: its per-call CPU minus the required-work floor
    (the bare grpc.aio server doing only what every CA must) measured in the same run."""
    ours = r.get("ca_cpu_us_per_cert")
    floor = r.get("floor", {}).get("required_work_us_per_call")
    return ours - floor if ours is not None and floor is not None else None


def headline_keys(
    ours: dict[str, Any], istio: dict[str, Any], cfssl: dict[str, Any]
) -> dict[str, Any]:
    """The c=32 figures latest.json carries at the top level (the goals read these)."""
    return {
        "ca_cpu_us_per_cert": ours.get("server_cpu_us_per_cert"),
        "ca_certs_per_s": ours.get("certs_per_s"),
        "ca_p99_ms": ours.get("p99_ms"),
        "istio_ca_cpu_us_per_cert": istio.get("server_cpu_us_per_cert"),
        "istio_ca_certs_per_s": istio.get("certs_per_s"),
        "istio_ca_p99_ms": istio.get("p99_ms"),
        "istio_ca_rss_mb": istio.get("server_rss_mb"),
        "cfssl_cpu_us_per_cert": cfssl.get("server_cpu_us_per_cert"),
        "cfssl_certs_per_s": cfssl.get("certs_per_s"),
        "cfssl_p99_ms": cfssl.get("p99_ms"),
    }


def hsm_phase(work: Path, r: dict[str, Any]) -> None:
    """The CA with its key in SoftHSM2 against the same CA with a key file (issue 24)."""
    from bench.hsm_bench import hsm_phase as run_hsm
    from bench.workloads import make_workloads, save

    wl_file = work / "workloads.json"
    if not wl_file.exists():  # BENCH_ONLY=hsm: the CA phase did not make them
        log("making 1,000 workloads (ECDSA P-256 key, CSR, RS256 token each)")
        save(make_workloads(work / "bulwark", 1000), wl_file)
    run_hsm(work, wl_file, work / "bulwark", r, rounds=ROUNDS, window_s=CA_WINDOW_S, log=log)


def agent_phase(work: Path, r: dict[str, Any]) -> None:
    from bench import agent_bench, pilot_agent_bench
    from tests.support.ca_process import start_ca
    from tests.support.interop import istio_binaries

    log("building pilot-agent (cached after the first run)")
    istio = istio_binaries()
    # A pod runs the agent from an installed package, which pip byte-compiles; this machine
    # sets PYTHONDONTWRITEBYTECODE, so without this every start here would recompile our code.
    log("byte-compiling agent, certs and protos, as pip does when it installs the image")
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "agent", "certs", "protos", "bench"],
        cwd=REPO,
        check=True,
    )
    log(
        f"agent vs pilot-agent: {AGENT_STARTS} interleaved starts each (first SDS certificate, "
        "RSS); then our agent's idle CPU and SDS push latency"
    )
    ca = start_ca(work / "agent-ca", "--mtls-grpc-addr", "", workers=1)
    try:
        agent = agent_bench.bench_agent(
            ca,
            work / "agent",
            starts=AGENT_STARTS,
            idle_s=3 if QUICK else 10,
            watch_s=15 if QUICK else 40,
            peer=functools.partial(pilot_agent_bench.pilot_first_cert, istio),
        )
    finally:
        ca.stop()
    pilot = pilot_agent_bench.summarize(agent.pop("peer_runs"))
    r.update(agent=agent, pilot_agent=pilot)
    r.update(
        agent_rss_mb=agent["rss_mb"],
        agent_anon_mb=agent["anon_mb"],
        agent_floor_rss_mb=agent["floor_rss_mb"],
        agent_floor_first_cert_s_p50=agent["floor_first_cert_s_p50"],
        agent_first_cert_s_p50=agent["first_cert_s_p50"],
        agent_push_p99_ms=agent["push_p99_ms"],
        agent_idle_cpu_pct=agent["idle_cpu_pct"],
        pilot_agent_rss_mb=pilot["rss_mb"],
        pilot_agent_first_cert_s_p50=pilot["first_cert_s_p50"],
    )


def node_phase(work: Path, r: dict[str, Any]) -> None:
    from bench import node_bench
    from tests.support.ca_process import start_ca
    from tests.support.node_agent import node_policy_args

    log(
        "node agent: 20 uids x 5 pods (SDS + Workload API stream each) connecting as it starts; "
        "then new pods' first certificates"
    )
    ca = start_ca(work / "node-ca", *node_policy_args(work / "node-policy"), workers=1)
    try:
        node = node_bench.bench_node(ca, work / "node-logs", samples=7 if QUICK else 15)
    finally:
        ca.stop()
    r.update(
        node_agent=node,
        node_agent_rss_mb_100pods=node["rss_mb_100pods"],
        node_agent_first_cert_ms_p50=node["first_cert_ms_p50"],
        node_agent_reboot_100pods_s=node["reboot_100pods_s"],
    )


def fleet_phase(work: Path, r: dict[str, Any]) -> None:
    from bench import fleet_bench

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


def main() -> int:
    from bench import goals, report

    phases = selected_phases(os.environ.get("BENCH_ONLY", ""))
    out = output_dir(phases)
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bwb-", dir="/tmp"))
    r: dict[str, Any] = {
        "machine": machine(),
        "commit": commit(),
        "started_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "headline_concurrency": HEADLINE_CONCURRENCY,
        "quick": QUICK,
        "only": ",".join(phases) if phases != list(PHASES) else "",
        "rounds": ROUNDS,
    }
    latencies: dict[str, list[float]] = {}
    try:
        if "ca" in phases:
            ca_phase(work, out, r, latencies)
        if "hsm" in phases:
            hsm_phase(work, r)
        if "agent" in phases:
            agent_phase(work, r)
        if "node" in phases:
            node_phase(work, r)
        if "fleet" in phases:
            fleet_phase(work, r)
        r["total_s"] = time.monotonic() - t_start
        md = report.write(out, r, latencies)
        print(md)
        print("Goals (issues 18, 23, 24):\n" + goals.console(r), flush=True)
        log(f"done in {r['total_s']:.0f} s; results in {out}/")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
