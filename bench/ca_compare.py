"""The CA comparison of `make bench`: Bulwark, Istio's own CA and cfssl under the same load.

All three servers run at once (idle ones cost nothing measurable); the load generator visits
them interleaved: for each round, for each concurrency, each server in turn (the order rotates
every round), so a noisy minute on the shared machine touches every server alike. Each figure
is the median over the rounds, with its spread (min, max) beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ca_bench import run_loadgen

# Figures aggregated over rounds: the median is the figure, [min, max] its spread.
SPREAD_KEYS = (
    "certs_per_s",
    "server_cpu_us_per_cert",
    "server_switches_per_cert",
    "client_cpu_us_per_cert",
    "server_rss_mb",
    "p50_ms",
    "p99_ms",
    "max_ms",
)


@dataclass
class Server:
    name: str  # "bulwark", "istio", "cfssl" or "bulwark_batch": its rows' key in latest.json
    mode: str  # the load generator's protocol: "grpc", "batch" or "cfssl"
    addr: str
    pid: int
    root: Path | None  # the TLS root for grpc and batch modes
    # A server measured at one slot only (the batch call: a few node agents, not c callers):
    # it runs in the `only_at` concurrency's turn of each round, with `callers` callers.
    only_at: int | None = None
    callers: int | None = None
    load_args: dict[str, Any] = field(default_factory=dict)  # batch_size, node_token_file

    def runs_at(self, concurrency: int) -> bool:
        return self.only_at is None or self.only_at == concurrency


def pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """One load generator run without its latency list: p50, p99, max instead."""
    out = dict(run)
    lat = out.pop("latencies_ms")
    out.update(p50_ms=pct(lat, 0.5), p99_ms=pct(lat, 0.99), max_ms=max(lat) if lat else None)
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one server at one concurrency -> one row: medians, spreads, summed counts."""
    row: dict[str, Any] = {
        "mode": runs[0]["mode"],
        "concurrency": runs[0]["concurrency"],
        "callers": runs[0].get("callers", runs[0]["concurrency"]),
        "batch_size": runs[0].get("batch_size", 1),
        "rounds": len(runs),
        "certs": sum(r["certs"] for r in runs),
        "elapsed_s": sum(r["elapsed_s"] for r in runs),
        "server_cpu_s": sum(r["server_cpu_s"] for r in runs),
        "failures": sum(r["failures"] for r in runs),
        "failures_warmup": sum(r["failures_warmup"] for r in runs),
        "spread": {},
    }
    for key in SPREAD_KEYS:
        xs = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(xs) if xs else None
        row["spread"][key] = [min(xs), max(xs)] if xs else None
    return row


def interleaved(
    servers: list[Server],
    wl_file: Path,
    concurrencies: list[int],
    *,
    rounds: int,
    window_s: float,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[float]]]:
    """Every server at every concurrency, `rounds` times, interleaved.

    Returns the per-concurrency rows of each server (by name) and the latencies of every
    measured call, keyed "<server> c=<n>", for the latency chart."""
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {s.name: {} for s in servers}
    latencies: dict[str, list[float]] = {}
    for r in range(rounds):
        for c in concurrencies:
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for s in (s for s in order if s.runs_at(c)):
                run = run_loadgen(
                    s.mode,
                    s.addr,
                    s.pid,
                    wl_file,
                    concurrency=s.callers or c,
                    root=s.root,
                    duration_s=window_s,
                    **s.load_args,
                )
                if s.mode != "batch":  # a batch's latency is a call's, not a certificate's
                    latencies.setdefault(f"{s.name} c={c}", []).extend(run["latencies_ms"])
                one = summarize(run)
                one["concurrency"] = c  # the slot it ran in (`callers` says how many it had)
                one["callers"] = s.callers or c
                raw[s.name].setdefault(c, []).append(one)
                log(
                    f"  round {r + 1}/{rounds} c={c} {s.name}: {one['certs_per_s']:,.0f} certs/s, "
                    f"{_us(one['server_cpu_us_per_cert'])} us CPU/cert, p99 {_ms(one['p99_ms'])} ms"
                )
    rows = {
        name: [aggregate(by_c[c]) for c in concurrencies if c in by_c] for name, by_c in raw.items()
    }
    return rows, latencies


def _us(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.1f}"


def at(rows: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """The row of `concurrency` (empty when that concurrency was not measured)."""
    return next((x for x in rows if x["concurrency"] == concurrency), {})
