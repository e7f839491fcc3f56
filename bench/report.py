"""Results of `make bench`: latest.json, latest.md (goals, each figure as a ratio to its peer)
and two charts: latency.png (latency CDF) and ca_by_concurrency.png (CPU per certificate and
p99 by concurrency for Bulwark, Istio's CA and cfssl).

Every section tolerates a run that measured only part (BENCH_ONLY, a failed phase): a missing
figure prints "n/a", a missing goal figure "not measured".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import goals
from bench.ca_compare import pct

__all__ = ["chart", "markdown", "pct", "write"]

SERVERS = (("ca", "Bulwark"), ("istio_ca", "Istio's CA"), ("cfssl", "cfssl"))
ROW_KEYS = {"ca": "ca_runs", "istio_ca": "istio_ca_runs", "cfssl": "cfssl_runs"}


def _f(x: Any, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def _row(r: dict[str, Any], server: str, concurrency: int) -> dict[str, Any]:
    return next((x for x in r.get(ROW_KEYS[server], []) if x["concurrency"] == concurrency), {})


def _spread(row: dict[str, Any], key: str, digits: int = 0) -> str:
    """`median (min-max)` over the rounds of one row, or just the value for older results."""
    value = row.get(key)
    lo_hi = row.get("spread", {}).get(key)
    if value is None:
        return "n/a"
    if not lo_hi:
        return _f(value, digits)
    return f"{_f(value, digits)} ({_f(lo_hi[0], digits)}-{_f(lo_hi[1], digits)})"


def markdown(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    lines = [
        f"Machine: {m.get('cores')} cores, {m.get('cpu_model')}; commit {r.get('commit', '')[:12]}; "
        f"{r.get('started_utc')}; load average at start {m.get('loadavg_start')}"
        f"{'; QUICK run (short windows: not for results)' if r.get('quick') else ''}"
        f"{'; only ' + r['only'] if r.get('only') else ''}.",
        "",
        f"Goals (issues 18, 23, 24), each against figures of this same run, c={r.get('headline_concurrency')}:",
        "",
        *goals.table(r),
        *_ca_peers(r),
        *_batch(r),
        *_hsm(r),
        *_agent_peers(r),
        *_node_agent(r),
        *_information(r),
        *_per_concurrency(r),
        *_floor(r),
    ]
    return "\n".join(lines) + "\n"


def _ca_peers(r: dict[str, Any]) -> list[str]:
    if not r.get("ca_runs"):
        return []
    c = r.get("headline_concurrency", goals.HEADLINE_CONCURRENCY)
    rows = {s: _row(r, s, c) for s, _ in SERVERS}
    return [
        "",
        f"The CA against its peers, c={c}, median over {rows['ca'].get('rounds', 1)} interleaved "
        "rounds (min-max):",
        "",
        "| figure | Bulwark | Istio's CA | cfssl | Bulwark / Istio | Bulwark / cfssl |",
        "|---|---|---|---|---|---|",
        *_ca_rows(rows),
        "",
        "Fairness: Bulwark commits every certificate to its record (SQLite) before answering; "
        "Istio's CA keeps none. Bulwark caches verified tokens; Istio's JwtAuthenticator "
        "verifies each (after its ClientCertAuthenticator, istiod's order) and checks the "
        "signature of each certificate it makes (Go's x509.CreateCertificate does).",
    ]


def _hsm(r: dict[str, Any]) -> list[str]:
    """The HSM phase: the CA with its key in SoftHSM2 vs a key file, and one signature."""
    sign = r.get("hsm_sign")
    if not sign:
        return []
    return [
        "",
        "The CA key in SoftHSM2 vs a key file (same CA, same load, interleaved), and one ECDSA "
        "P-256 signature of a leaf's TBS on one core:",
        "",
        "| figure | key in SoftHSM2 | key file | ratio |",
        "|---|---|---|---|",
        f"| CA CPU per certificate (us) | {_f(r.get('ca_hsm_cpu_us_per_cert'))} | "
        f"{_f(r.get('ca_filekey_cpu_us_per_cert'))} | "
        f"{_ratio(r.get('ca_hsm_cpu_us_per_cert'), r.get('ca_filekey_cpu_us_per_cert'))} |",
        f"| certificates/s | {_f(r.get('ca_hsm_certs_per_s'))} | "
        f"{_f(r.get('ca_filekey_certs_per_s'))} | "
        f"{_ratio(r.get('ca_hsm_certs_per_s'), r.get('ca_filekey_certs_per_s'))} |",
        f"| one signature, CPU (us) | {_f(sign.get('softhsm_cpu_us'), 1)} | "
        f"{_f(sign.get('software_cpu_us'), 1)} | "
        f"{_ratio(sign.get('softhsm_cpu_us'), sign.get('software_cpu_us'))} |",
        f"| one signature, wall (us) | {_f(sign.get('softhsm_wall_us'), 1)} | "
        f"{_f(sign.get('software_wall_us'), 1)} | "
        f"{_ratio(sign.get('softhsm_wall_us'), sign.get('software_wall_us'))} |",
    ]


def _ca_rows(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for key, label, digits in (
        ("server_cpu_us_per_cert", "server CPU per certificate (us)", 0),
        ("certs_per_s", "certificates/s", 0),
        ("p50_ms", "p50 latency (ms)", 1),
        ("p99_ms", "p99 latency (ms)", 1),
        ("server_rss_mb", "server RSS (MB; Bulwark: supervisor + 2 workers)", 0),
        ("server_switches_per_cert", "server context switches per certificate", 1),
    ):
        ours = rows["ca"].get(key)
        lines.append(
            f"| {label} | {_spread(rows['ca'], key, digits)} | {_spread(rows['istio_ca'], key, digits)} | "
            f"{_spread(rows['cfssl'], key, digits)} | {_ratio(ours, rows['istio_ca'].get(key))} | "
            f"{_ratio(ours, rows['cfssl'].get(key))} |"
        )
    return lines


def _batch(r: dict[str, Any]) -> list[str]:
    """The batch call against Istio's CA per call and Bulwark's own per-call path."""
    c = r.get("headline_concurrency", goals.HEADLINE_CONCURRENCY)
    batch = next(iter(r.get("ca_batch_runs", [])), None)
    if batch is None:
        return []
    per_call, istio = _row(r, "ca", c), _row(r, "istio_ca", c)
    lines = [
        "",
        f"BatchCreateCertificates: {batch.get('callers')} node agents, {batch.get('batch_size')} "
        f"certificates per call, each item impersonated (--node-identity-policy), one record "
        f"commit per call; against CreateCertificate at c={c} (median over "
        f"{batch.get('rounds', 1)} interleaved rounds, min-max):",
        "",
        "| figure | Bulwark batch | Bulwark per call | Istio's CA per call | batch / Istio |",
        "|---|---|---|---|---|",
    ]
    for key, label, digits in (
        ("server_cpu_us_per_cert", "server CPU per certificate (us)", 0),
        ("certs_per_s", "certificates/s", 0),
        ("server_switches_per_cert", "server context switches per certificate", 1),
        ("p99_ms", "p99 latency of a call (ms; a batch call carries 32)", 1),
    ):
        lines.append(
            f"| {label} | {_spread(batch, key, digits)} | {_spread(per_call, key, digits)} | "
            f"{_spread(istio, key, digits)} | {_ratio(batch.get(key), istio.get(key))} |"
        )
    lines += [
        "",
        "py-spy flame graph of one CA worker under the batch load: `ca-worker-batch-profile.svg`.",
    ]
    return lines


def _agent_peers(r: dict[str, Any]) -> list[str]:
    if r.get("agent_rss_mb") is None:
        return []
    pa = r.get("pilot_agent", {})
    figures = (
        ("RSS after first certificate (MB)", r.get("agent_rss_mb"), r.get("pilot_agent_rss_mb"), 1),
        (
            "anonymous memory (MB; the rest of RSS is shared library pages)",
            r.get("agent_anon_mb"),
            pa.get("anon_mb"),
            1,
        ),
        (
            "start to first SDS certificate, p50 (s)",
            r.get("agent_first_cert_s_p50"),
            r.get("pilot_agent_first_cert_s_p50"),
            3,
        ),
    )
    lines = [
        "",
        f"The agent against pilot-agent (same Bulwark CA, same proxy, {r.get('agent', {}).get('starts')} "
        "interleaved starts each; Envoy replaced by the stand-in):",
        "",
        "| figure | Bulwark agent | pilot-agent | ratio |",
        "|---|---|---|---|",
    ]
    for label, ours, theirs, digits in figures:
        lines.append(
            f"| {label} | {_f(ours, digits)} | {_f(theirs, digits)} | {_ratio(ours, theirs)} |"
        )
    return lines


def _node_agent(r: dict[str, Any]) -> list[str]:
    node = r.get("node_agent")
    if not node:
        return []
    return [
        "",
        f"The node agent ({node.get('attestor')} attestor, one Bulwark CA): {node.get('pods')} pods "
        f"of {node.get('accounts')} accounts held {node.get('connections')} connections and "
        f"{node.get('identities')} identities.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| RSS with 100 pods held (MB) | {_f(node.get('rss_mb_100pods'), 1)} |",
        f"| just started, 100 pods connecting at once: all served after (s) | {_f(node.get('reboot_100pods_s'), 2)} |",
        f"| new pod, new account (one CA round trip), p50 (ms) | {_f(node.get('first_cert_ms_p50'), 1)} |",
        f"| new pod, account already served, p50 (ms) | {_f(node.get('first_cert_shared_ms_p50'), 1)} |",
    ]


def _information(r: dict[str, Any]) -> list[str]:
    """Figures kept as information: the retired goals' ratios, storm and herd details."""
    lines = [
        "",
        "Information (the retired goals' figures and the fleet details):",
        "",
        "| figure | value | reference (same run) | ratio |",
        "|---|---|---|---|",
    ]
    ca, cf, lim = (
        r.get("ca_cpu_us_per_cert"),
        r.get("cfssl_cpu_us_per_cert"),
        r.get("crypto_limit_us_per_cert"),
    )
    if r.get("ca_overhead_us_per_cert") is not None:
        floor = r.get("floor", {}).get("required_work_us_per_call")
        lines.append(
            f"| ca_overhead_us_per_cert: Bulwark's own work per certificate (per-call CPU minus the required-work floor) | {_f(r['ca_overhead_us_per_cert'])} us | floor {_f(floor)} us | {_ratio(ca, floor)} |"
        )
    if ca is not None:
        lines += [
            f"| CA server CPU per certificate vs cfssl | {_f(ca)} us | cfssl {_f(cf)} us | {_ratio(ca, cf)} |",
            f"| CA server CPU per certificate vs crypto limit | {_f(ca)} us | crypto {_f(lim)} us/core | {_ratio(ca, lim)} |",
            f"| cfssl writes the SPIFFE URI SAN (equivalent signing work) | {_f(r.get('cfssl_uri_san'))} | | |",
        ]
    if r.get("agent_rss_mb") is not None:
        floor = r.get("agent_floor_rss_mb")
        lines += [
            f"| agent RSS vs library floor (grpcio, cryptography, protobuf doing the agent's work) | {_f(r['agent_rss_mb'], 1)} MB | floor {_f(floor, 1)} MB | {_ratio(r['agent_rss_mb'], floor)} |",
            f"| agent start to first certificate vs library floor (the floor's is to its verified certificate, before any SDS client) | {_f(r.get('agent_first_cert_s_p50'), 3)} s | floor {_f(r.get('agent_floor_first_cert_s_p50'), 3)} s | {_ratio(r.get('agent_first_cert_s_p50'), r.get('agent_floor_first_cert_s_p50'))} |",
            f"| agent idle CPU | {_f(r.get('agent_idle_cpu_pct'), 2)} % of a core | | |",
        ]
    lines += _fleet(r)
    return lines if len(lines) > 5 else []


def _fleet(r: dict[str, Any]) -> list[str]:
    lines = []
    s = r.get("storm")
    if s:
        lines += [
            f"| storm: rotations ({s['workloads']} workloads, TTL {r.get('storm_ttl_s')} s, {_f(r.get('storm_duration_s'))} s), failed / expired before renewal | {_f(s.get('rotations'))}, {_f(s.get('failed_rotations'))} / {_f(s.get('expired_before_renewal'))} | | |",
            f"| storm: CA max RSS, p99 latency | {_f(s.get('server_max_rss_mb'))} MB, {_f(s.get('p99_ms'), 1)} ms | | |",
        ]
    h = r.get("herd")
    if h:
        lines += [
            f"| herd: CA max RSS ({h['workloads']} CSRs at once) | {_f(r.get('herd_max_rss_mb'))} MB | bound {r.get('herd_rss_bound_mb')} MB | |",
            f"| herd: within Istio's 5 retries / needed agent backoff | {_f(h.get('within_istio_retries'))} / {_f(h.get('needed_agent_backoff'))} | | |",
            f"| herd: refusals the clients retried (RESOURCE_EXHAUSTED from the RPC limit, CANCELLED from grpc's bounded backlog) | {_refusals(h.get('codes', {}))} | | |",
        ]
    q = r.get("herd_queue_all")
    if q:
        lines += [
            f"| herd, queue for all ({q['ca_args'][-1]} RPCs per worker): CA max RSS / all served after | {_f(q.get('server_max_rss_mb'))} MB / {_f(q.get('all_succeeded_s'), 1)} s | | |",
        ]
    return lines


def _refusals(codes: dict[str, int]) -> str:
    refused = sorted((name, n) for name, n in codes.items() if name != "OK")
    return ", ".join(f"{name} {_f(n)}" for name, n in refused) or "none"


def _per_concurrency(r: dict[str, Any]) -> list[str]:
    if not r.get("ca_runs"):
        return []
    lines = [
        "",
        "Per concurrency, median (min-max) over the rounds; server CPU from /proc (Bulwark: the "
        "supervisor plus every worker):",
        "",
        "| server | c | certs/s | server CPU us/cert | switches/cert | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for server, label in SERVERS:
        for row in r.get(ROW_KEYS[server], []):
            lines.append(
                f"| {label} | {row['concurrency']} | {_spread(row, 'certs_per_s')} | "
                f"{_spread(row, 'server_cpu_us_per_cert')} | {_spread(row, 'server_switches_per_cert', 1)} | "
                f"{_spread(row, 'p50_ms', 1)} | {_spread(row, 'p99_ms', 1)} | {row['failures']} |"
            )
    return lines


def _required_floor(f: dict[str, Any], istio: float | None) -> list[str]:
    """The least this stack costs per certificate, and that floor as a ratio to Istio's CA."""
    work = f.get("required_work_us_per_call")
    if work is None:
        return []
    least = work + f["record_us"]
    return [
        f"| required-work floor: the bare server doing only a cached-token lookup, CSR parse and signature check and one ECDSA signature per call ({_f(f.get('required_work_calls_per_s'))} calls/s) | {_f(work)} |",
        f"| least this stack can cost per certificate: required-work floor + record alone (vs Istio's CA {_f(istio)} us) | {_f(least)} ({_ratio(least, istio)}) |",
    ]


def _floor(r: dict[str, Any]) -> list[str]:
    f, ca, lines = r.get("floor"), r.get("ca_cpu_us_per_cert"), []
    if f:
        parts = f["bare_grpc_us_per_call"] + f["inprocess_issue_us"] + f["record_us"]
        lines += [
            "",
            f"Where the CA's {_f(ca)} us per certificate go (each part measured alone in this run; "
            "the floor a goal out of reach is measured against):",
            "",
            "| part | us per certificate |",
            "|---|---|",
            f"| bare grpc.aio server, TLS, 2 workers, fixed answer (transport floor, {_f(f['bare_grpc_calls_per_s'])} calls/s, {_f(f.get('bare_grpc_switches_per_call'), 1)} context switches/call) | {_f(f['bare_grpc_us_per_call'])} |",
            f"| CA request path in-process, one event loop (metadata, cached token, CSR check, template signing, signature + SVID check) | {_f(f['inprocess_issue_us'])} |",
            f"| issuance record alone (SQLite, AsyncRecorder, 16 concurrent callers) | {_f(f['record_us'])} |",
            f"| sum of the parts | {_f(parts)} |",
            f"| remainder: the parts interfering inside a worker (grpc's threads handing each call to the event loop) | {_f(ca - parts if ca else None)} |",
            *_required_floor(f, r.get("istio_ca_cpu_us_per_cert")),
            "",
            "py-spy flame graph of one CA worker under the same load: `ca-worker-profile.svg`.",
        ]
    c = r.get("crypto_limit")
    if c:
        lines += [
            "",
            f"Crypto limit per certificate, one core: CSR verify {_f(c['csr_verify_us'], 1)} us + ECDSA P-256 sign "
            f"{_f(c['cert_sign_us'], 1)} us + RS256 verify {_f(c['token_verify_us'], 1)} us = {_f(c['total_us'], 1)} us.",
        ]
    if r.get("agent_floor_rss_mb") is not None:
        lines += [
            "",
            f"Agent library floor (grpcio, cryptography, protobuf and the SDS stubs doing only the agent's "
            f"library work): RSS {_f(r['agent_floor_rss_mb'], 1)} MB, anonymous {_f(r.get('agent', {}).get('floor_anon_mb'), 1)} MB.",
        ]
    return lines


def chart(r: dict[str, Any], latencies: dict[str, list[float]], path: Path) -> None:
    """Latency CDF of every server at every concurrency (colour: concurrency; style: server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"bulwark": "-", "istio": ":", "cfssl": "--"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors: dict[str, str] = {}
    for label, xs in latencies.items():
        if not xs:
            continue
        s = sorted(xs)
        ys = [(i + 1) / len(s) for i in range(len(s))]
        server, concurrency = label.rsplit(" ", 1)
        color = colors.setdefault(concurrency, f"C{len(colors)}")
        ax.plot(s, ys, label=label, linestyle=styles.get(server, "-."), color=color)
    ax.set_xscale("log")
    ax.set_xlabel("latency per certificate (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(
        "Issuance latency CDF, closed loop: Bulwark (solid), Istio's CA (dotted), cfssl (dashed), "
        f"{r['machine']['cores']} cores, commit {r['commit'][:8]}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def concurrency_chart(r: dict[str, Any], path: Path) -> None:
    """CPU per certificate and p99 by concurrency, median with the rounds' min-max as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, ylabel in (
        (axes[0], "server_cpu_us_per_cert", "server CPU per certificate (us)"),
        (axes[1], "p99_ms", "p99 latency (ms)"),
    ):
        for server, label in SERVERS:
            rows = [x for x in r.get(ROW_KEYS[server], []) if x.get(key) is not None]
            if not rows:
                continue
            xs = [x["concurrency"] for x in rows]
            ys = [x[key] for x in rows]
            spread = [x.get("spread", {}).get(key) or [x[key], x[key]] for x in rows]
            err = [
                [y - s[0] for y, s in zip(ys, spread, strict=True)],
                [s[1] - y for y, s in zip(ys, spread, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted({x["concurrency"] for x in r.get("ca_runs", [])})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Bulwark vs Istio's CA vs cfssl, same run, {r['machine']['cores']} cores, "
        f"commit {r['commit'][:8]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results_dir: Path, r: dict[str, Any], latencies: dict[str, list[float]]) -> str:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    md = markdown(r)
    (results_dir / "latest.md").write_text("# Bulwark benchmark results\n\n" + md)
    if latencies:
        chart(r, latencies, results_dir / "latency.png")
    if r.get("ca_runs"):
        concurrency_chart(r, results_dir / "ca_by_concurrency.png")
    return md
