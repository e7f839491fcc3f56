"""Many simulated workloads against one CA, run as its own process (Istio's retry policy):

- `storm`: every workload rotates its certificate at half-life (jittered, as istio-agent does) on
  a short TTL for a fixed time; a rotation fails when Istio's retries are exhausted.
- `herd`: every workload asks for its first certificate at the same moment; after Istio's 5
  retries a workload falls back to the agent's own backoff (0.5 s doubling to 60 s) and tries
  again, and the run reports how many needed that.

The server's memory and CPU are sampled from /proc while it runs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import procstat  # noqa: E402
from bench.loadgen import METHOD, grpc_channels, grpc_request_bytes  # noqa: E402
from bench.workloads import load  # noqa: E402

# istio pkg/security CARetryOptions: 5 retries, exponential backoff from 100 ms, 10% jitter
ISTIO_MAX_RETRIES = 5
ISTIO_BACKOFF_S = 0.1
RETRY_CODES = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNAVAILABLE"}
)
AGENT_BACKOFF_S = (0.5, 60.0)  # the agent's own retry after the client gives up


class Stats:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.latencies: list[float] = []  # whole call with retries, seconds

    def code(self, name: str) -> None:
        self.codes[name] = self.codes.get(name, 0) + 1


async def istio_call(
    stub: Any,
    request: bytes,
    metadata: tuple[tuple[str, str], ...],
    stats: Stats,
    rng: random.Random,
    timeout_s: float,
) -> bool:
    """One CSR with Istio's client retry policy; True when a certificate came back."""
    import grpc

    for attempt in range(ISTIO_MAX_RETRIES + 1):
        if attempt:
            backoff = ISTIO_BACKOFF_S * 2 ** (attempt - 1)
            await asyncio.sleep(backoff * (1 + rng.uniform(-0.1, 0.1)))
        try:
            await stub(request, metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            name = exc.code().name
            stats.code(name)
            if name not in RETRY_CODES:
                return False
            continue
        stats.code("OK")
        return True
    return False


async def sampler(server_pid: int, out: dict[str, float], stop: asyncio.Event) -> None:
    first = procstat.sample(server_pid)
    out["max_rss_mb"] = first.rss_bytes / 2**20
    while not stop.is_set():
        await asyncio.sleep(0.2)
        s = procstat.sample(server_pid)
        out["max_rss_mb"] = max(out["max_rss_mb"], s.rss_bytes / 2**20)
        out["cpu_s"] = s.cpu_since(first)


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    workloads = load(Path(args.workloads))
    channels = grpc_channels(args.addr, Path(args.root).read_bytes(), args.channels)
    stubs = [ch.unary_unary(METHOD) for ch in channels]
    stats = Stats()
    rng = random.Random(7)
    server: dict[str, float] = {}
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(args.server_pid, server, stop))
    start = time.monotonic()
    end = start + args.duration_s
    counts = {"rotations": 0, "failed_rotations": 0, "expired_before_renewal": 0}

    async def workload(k: int) -> None:
        w = workloads[k]
        request = grpc_request_bytes(w.csr_pem, args.ttl_s)
        md = (("authorization", f"Bearer {w.token}"),)
        stub = stubs[k % len(stubs)]
        # pods started at different times: spread first requests over one half-life
        await asyncio.sleep(min(rng.uniform(0, args.ttl_s / 2), max(0.0, end - time.monotonic())))
        expires = float("inf")
        while time.monotonic() < end:
            t0 = time.monotonic()
            ok = await istio_call(stub, request, md, stats, rng, 10.0)
            if not ok:
                counts["failed_rotations"] += 1
                await asyncio.sleep(AGENT_BACKOFF_S[0])
                continue
            done = time.monotonic()
            stats.latencies.append(done - t0)
            if done > expires:
                counts["expired_before_renewal"] += 1
            counts["rotations"] += 1
            expires = t0 + args.ttl_s
            ratio = 0.5 + rng.uniform(-0.01, 0.01)  # SECRET_GRACE_PERIOD_RATIO and its jitter
            renew_at = min(expires - ratio * args.ttl_s, end)
            await asyncio.sleep(max(0.0, renew_at - time.monotonic()))

    await asyncio.gather(*(workload(k) for k in range(len(workloads))))
    elapsed = time.monotonic() - start
    stop.set()
    await sampling
    for ch in channels:
        await ch.close()
    return {
        "workloads": len(workloads),
        "elapsed_s": elapsed,
        **counts,
        "codes": stats.codes,
        **_latency_summary(stats.latencies),
        "server_max_rss_mb": server.get("max_rss_mb"),
        "server_cpu_s": server.get("cpu_s"),
        "server_cpu_us_per_cert": server.get("cpu_s", 0) / max(counts["rotations"], 1) * 1e6,
    }


async def herd(args: argparse.Namespace) -> dict[str, Any]:
    workloads = load(Path(args.workloads))
    channels = grpc_channels(args.addr, Path(args.root).read_bytes(), args.channels)
    for ch in channels:  # connections up before the herd, as with long-running agents
        await ch.channel_ready()
    stubs = [ch.unary_unary(METHOD) for ch in channels]
    stats = Stats()
    rng = random.Random(11)
    server: dict[str, float] = {}
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(args.server_pid, server, stop))
    requests = [grpc_request_bytes(w.csr_pem, 3600) for w in workloads]
    start = time.monotonic()
    deadline = start + args.duration_s
    done_at: list[float] = []
    agent_rounds: list[int] = []

    async def workload(k: int) -> None:
        md = (("authorization", f"Bearer {workloads[k].token}"),)
        stub = stubs[k % len(stubs)]
        backoff = AGENT_BACKOFF_S[0]
        rounds = 0
        while time.monotonic() < deadline:
            if await istio_call(stub, requests[k], md, stats, rng, 60.0):
                done_at.append(time.monotonic() - start)
                agent_rounds.append(rounds)
                return
            rounds += 1
            await asyncio.sleep(backoff * rng.uniform(0.5, 1.0))
            backoff = min(backoff * 2, AGENT_BACKOFF_S[1])

    await asyncio.gather(*(workload(k) for k in range(len(workloads))))
    stop.set()
    await sampling
    for ch in channels:
        await ch.close()
    done_at.sort()
    return {
        "workloads": len(workloads),
        "succeeded": len(done_at),
        "all_succeeded_s": done_at[-1] if len(done_at) == len(workloads) else None,
        "p50_done_s": done_at[len(done_at) // 2] if done_at else None,
        "within_istio_retries": sum(1 for r in agent_rounds if r == 0),
        "needed_agent_backoff": sum(1 for r in agent_rounds if r > 0),
        "max_agent_rounds": max(agent_rounds, default=0),
        "codes": stats.codes,
        "server_max_rss_mb": server.get("max_rss_mb"),
        "server_cpu_s": server.get("cpu_s"),
    }


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    xs = sorted(latencies)
    if not xs:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": xs[len(xs) // 2] * 1e3,
        "p99_ms": xs[int(len(xs) * 0.99)] * 1e3,
        "max_ms": xs[-1] * 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["storm", "herd"])
    p.add_argument("--addr", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--workloads", required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--channels", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=180.0)
    p.add_argument("--ttl-s", type=int, default=60)
    args = p.parse_args()
    result = asyncio.run(storm(args) if args.mode == "storm" else herd(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
