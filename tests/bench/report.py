"""Results of `make bench`: latest.json, latest.md (the table with ratios) and the PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def _f(x: Any, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(r: dict[str, Any]) -> str:
    ca, cf, lim = r["ca_cpu_us_per_cert"], r["cfssl_cpu_us_per_cert"], r["crypto_limit_us_per_cert"]
    floor = r.get("agent_floor_rss_mb")  # absent from results older than the floor measurement
    lines = [
        f"Machine: {r['machine']['cores']} cores, {r['machine']['cpu_model']}; commit {r['commit'][:12]}; "
        f"{r['started_utc']}; load average at start {r['machine']['loadavg_start']}.",
        "",
        "| figure | value | baseline (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
        f"| CA server CPU per certificate (c={r['headline_concurrency']}) | {_f(ca)} us | cfssl {_f(cf)} us | "
        f"{_f(ca / cf if ca and cf else None, 2)}x | < 1x cfssl | {_yes(ca is not None and cf is not None and ca < cf)} |",
        f"| CA server CPU per certificate vs crypto limit | {_f(ca)} us | crypto {_f(lim)} us/core | "
        f"{_f(ca / lim if ca and lim else None, 2)}x | <= 3.2x | {_yes(ca is not None and ca <= 3.2 * lim)} |",
        f"| CA certificates/s (c={r['headline_concurrency']}) | {_f(r['ca_certs_per_s'])} | cfssl {_f(r['cfssl_certs_per_s'])} | "
        f"{_f(r['ca_certs_per_s'] / r['cfssl_certs_per_s'] if r['cfssl_certs_per_s'] else None, 2)}x | | |",
        f"| CA p99 latency (c={r['headline_concurrency']}) | {_f(r['ca_p99_ms'], 1)} ms | cfssl {_f(r['cfssl_p99_ms'], 1)} ms | "
        f"{_f(r['ca_p99_ms'] / r['cfssl_p99_ms'] if r['cfssl_p99_ms'] else None, 2)}x | | |",
        f"| agent RSS after first certificate | {_f(r['agent_rss_mb'], 1)} MB | library floor {_f(floor, 1)} MB | "
        f"{_f(r['agent_rss_mb'] / floor if r['agent_rss_mb'] and floor else None, 2)}x | <= 45 MB | {_yes(r['agent_rss_mb'] is not None and r['agent_rss_mb'] <= 45)} |",
        f"| agent anonymous memory (heap, stacks; the rest of RSS is shared library pages a node shares between pods) | {_f(r.get('agent_anon_mb'), 1)} MB | | | | |",
        f"| agent start to first SDS certificate, p50 | {_f(r['agent_first_cert_s_p50'], 3)} s | | | < 0.5 s | {_yes(r['agent_first_cert_s_p50'] is not None and r['agent_first_cert_s_p50'] < 0.5)} |",
        f"| agent SDS push after rotation, 10 streams, p99 | {_f(r['agent_push_p99_ms'], 1)} ms | | | < 20 ms | {_yes(r['agent_push_p99_ms'] is not None and r['agent_push_p99_ms'] < 20)} |",
        f"| agent idle CPU | {_f(r['agent_idle_cpu_pct'], 2)} % of a core | | | | |",
        f"| storm: failed rotations ({r['storm']['workloads']} workloads, TTL {r['storm_ttl_s']} s, {r['storm_duration_s']:.0f} s) | "
        f"{_f(r['storm_failed_rotations'])} of {_f(r['storm']['rotations'])} | | | 0 | {_yes(r['storm_failed_rotations'] == 0 and r['storm']['expired_before_renewal'] == 0)} |",
        f"| storm: CA max RSS, p99 latency | {_f(r['storm']['server_max_rss_mb'])} MB, {_f(r['storm']['p99_ms'], 1)} ms | | | | |",
        f"| herd: CA max RSS ({r['herd']['workloads']} CSRs at once) | {_f(r['herd_max_rss_mb'])} MB | | | <= {r['herd_rss_bound_mb']} MB | {_yes(r['herd_max_rss_mb'] is not None and r['herd_max_rss_mb'] <= r['herd_rss_bound_mb'])} |",
        f"| herd: all clients succeeded after | {_f(r['herd_all_succeeded_s'], 1)} s | | | <= {r['herd_time_bound_s']} s | {_yes(r['herd_all_succeeded_s'] is not None and r['herd_all_succeeded_s'] <= r['herd_time_bound_s'])} |",
        f"| herd: within Istio's 5 retries / needed agent backoff | {_f(r['herd']['within_istio_retries'])} / {_f(r['herd']['needed_agent_backoff'])} | | | | |",
        f"| herd: refusals the clients retried (RESOURCE_EXHAUSTED from the RPC limit, CANCELLED from grpc's bounded backlog of unaccepted calls) | {_refusals(r['herd']['codes'])} | | | | |",
        *_queue_all(r),
        "",
        "Per concurrency (server CPU is the supervisor plus every worker, from /proc):",
        "",
        "| server | concurrency | certs/s | server CPU us/cert | server context switches/cert | p50 ms | p99 ms | max ms | failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["ca_runs"] + r["cfssl_runs"]:
        lines.append(
            f"| {'Bulwark' if row['mode'] == 'grpc' else 'cfssl'} | {row['concurrency']} | {_f(row['certs_per_s'])} | "
            f"{_f(row['server_cpu_us_per_cert'])} | {_f(row.get('server_switches_per_cert'), 1)} | {_f(row['p50_ms'], 1)} | {_f(row['p99_ms'], 1)} | "
            f"{_f(row['max_ms'], 1)} | {row['failures']} |"
        )
    f = r.get("floor")
    if f:
        parts = f["bare_grpc_us_per_call"] + f["inprocess_issue_us"] + f["record_us"]
        lines += [
            "",
            f"Where the CA's {_f(ca)} us per certificate go (each part measured alone in this run):",
            "",
            "| part | us per certificate |",
            "|---|---|",
            f"| bare grpc.aio server, TLS, 2 workers, fixed answer (transport floor, {_f(f['bare_grpc_calls_per_s'])} calls/s, {_f(f.get('bare_grpc_switches_per_call'), 1)} context switches/call) | {_f(f['bare_grpc_us_per_call'])} |",
            f"| CA request path in-process, one event loop (metadata, cached token, CSR check, template signing, signature + SVID check) | {_f(f['inprocess_issue_us'])} |",
            f"| issuance record alone (SQLite, AsyncRecorder, 16 concurrent callers) | {_f(f['record_us'])} |",
            f"| sum of the parts | {_f(parts)} |",
            f"| remainder: the parts interfering inside a worker (grpc's event-engine and poller threads handing each call to the event loop; context switches per certificate above) | {_f(ca - parts if ca else None)} |",
            "",
            "py-spy flame graph of one CA worker under the same load: `ca-worker-profile.svg`.",
        ]
    c = r["crypto_limit"]
    lines += [
        "",
        f"Crypto limit per certificate, one core: CSR verify {_f(c['csr_verify_us'], 1)} us + ECDSA P-256 sign "
        f"{_f(c['cert_sign_us'], 1)} us + RS256 verify {_f(c['token_verify_us'], 1)} us = {_f(c['total_us'], 1)} us.",
    ]
    return "\n".join(lines) + "\n"


def _refusals(codes: dict[str, int]) -> str:
    refused = sorted((name, n) for name, n in codes.items() if name != "OK")
    return ", ".join(f"{name} {_f(n)}" for name, n in refused) or "none"


def _queue_all(r: dict[str, Any]) -> list[str]:
    q = r.get("herd_queue_all")
    if not q:
        return []
    return [
        f"| herd, queue for all ({q['ca_args'][-1]} RPCs per worker): CA max RSS / all succeeded after | "
        f"{_f(q['server_max_rss_mb'])} MB / {_f(q['all_succeeded_s'], 1)} s | | | | |",
        f"| herd, queue for all: within Istio's 5 retries / needed agent backoff | "
        f"{_f(q['within_istio_retries'])} / {_f(q['needed_agent_backoff'])} | | | | |",
    ]


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def chart(r: dict[str, Any], latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors: dict[str, str] = {}
    for label, xs in latencies.items():
        if not xs:
            continue
        s = sorted(xs)
        ys = [(i + 1) / len(s) for i in range(len(s))]
        concurrency = label.rsplit(" ", 1)[-1]
        color = colors.setdefault(concurrency, f"C{len(colors)}")
        style = "-" if label.startswith("Bulwark") else "--"
        ax.plot(s, ys, label=label, linestyle=style, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("latency per certificate (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(
        f"Issuance latency CDF, closed loop: Bulwark (solid) vs cfssl (dashed), "
        f"{r['machine']['cores']} cores, commit {r['commit'][:8]}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results_dir: Path, r: dict[str, Any], latencies: dict[str, list[float]]) -> str:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    md = markdown(r)
    (results_dir / "latest.md").write_text("# Bulwark benchmark results\n\n" + md)
    chart(r, latencies, results_dir / "latency.png")
    return md
