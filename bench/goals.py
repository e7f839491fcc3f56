"""The goals `make bench` checks (issue 18; the batch pair and the node agent, issue 23; the
HSM pair, issue 24), each from figures of the same run.

A goal is met, not met, or not measured: a figure missing from the run (a peer that was not
run, BENCH_ONLY, a phase that failed) prints "not measured" and never counts as met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HEADLINE_CONCURRENCY = 32


@dataclass(frozen=True)
class Goal:
    """A figure against a bound; `peer` is the key of the same-run peer figure, if any."""

    name: str
    key: str
    unit: str
    bound: str
    check: Callable[[float, float | None], bool]  # (value, ratio to peer or None) -> met
    peer: str | None = None
    peer_label: str = ""
    needs_peer: bool = False  # the bound is a ratio to the peer: no peer figure, no verdict
    digits: int = 0
    extra: Callable[[dict[str, Any]], bool] | None = None  # a further condition on the run
    issue: int = 18  # the issue that set the goal (a run from before it cannot measure it)


@dataclass(frozen=True)
class Verdict:
    goal: Goal
    value: float | None
    peer_value: float | None
    ratio: float | None
    met: bool | None  # None: not measured

    @property
    def status(self) -> str:
        return {True: "met", False: "**not met**", None: "not measured"}[self.met]


def _storm_clean(r: dict[str, Any]) -> bool:
    return bool(r.get("storm", {}).get("expired_before_renewal", 1) == 0)


def _herd_small(r: dict[str, Any]) -> bool:
    rss = r.get("herd_max_rss_mb")
    return rss is not None and rss <= r.get("herd_rss_bound_mb", 600)


GOALS: tuple[Goal, ...] = (
    Goal(
        f"CA server CPU per certificate (c={HEADLINE_CONCURRENCY})",
        "ca_cpu_us_per_cert",
        "us",
        "<= 2.0x Istio's CA",  # issue 23 (issue 18 asked 1.5x; the node agent's batch goes further)
        lambda v, ratio: ratio is not None and ratio <= 2.0,
        peer="istio_ca_cpu_us_per_cert",
        peer_label="Istio's CA",
        needs_peer=True,
    ),
    Goal(
        f"CA certificates/s (c={HEADLINE_CONCURRENCY})",
        "ca_certs_per_s",
        "",
        ">= 0.75x Istio's CA",
        lambda v, ratio: ratio is not None and ratio >= 0.75,
        peer="istio_ca_certs_per_s",
        peer_label="Istio's CA",
        needs_peer=True,
    ),
    Goal(
        "CA server CPU per certificate, BatchCreateCertificates of 32",
        "ca_batch_cpu_us_per_cert",
        "us",
        "<= 0.8x Istio's CA per call",
        lambda v, ratio: ratio is not None and ratio <= 0.8,
        peer="istio_ca_cpu_us_per_cert",
        peer_label="Istio's CA",
        needs_peer=True,
        issue=23,
    ),
    Goal(
        "CA certificates/s, BatchCreateCertificates of 32",
        "ca_batch_certs_per_s",
        "",
        ">= 1.25x Istio's CA per call",
        lambda v, ratio: ratio is not None and ratio >= 1.25,
        peer="istio_ca_certs_per_s",
        peer_label="Istio's CA",
        needs_peer=True,
        issue=23,
    ),
    Goal(
        f"CA CPU per certificate, key in SoftHSM2 (c={HEADLINE_CONCURRENCY})",
        "ca_hsm_cpu_us_per_cert",
        "us",
        "<= 1.15x the file-key CA",
        lambda v, ratio: ratio is not None and ratio <= 1.15,
        peer="ca_filekey_cpu_us_per_cert",
        peer_label="file-key CA",
        needs_peer=True,
        issue=24,
    ),
    Goal(
        f"CA certificates/s, key in SoftHSM2 (c={HEADLINE_CONCURRENCY})",
        "ca_hsm_certs_per_s",
        "",
        ">= 0.85x the file-key CA",
        lambda v, ratio: ratio is not None and ratio >= 0.85,
        peer="ca_filekey_certs_per_s",
        peer_label="file-key CA",
        needs_peer=True,
        issue=24,
    ),
    Goal(
        "agent RSS after first certificate",
        "agent_rss_mb",
        "MB",
        "<= 1.35x pilot-agent",
        lambda v, ratio: ratio is not None and ratio <= 1.35,
        peer="pilot_agent_rss_mb",
        peer_label="pilot-agent",
        needs_peer=True,
        digits=1,
    ),
    Goal(
        "agent start to first SDS certificate, p50",
        "agent_first_cert_s_p50",
        "s",
        "<= 0.15 s",
        lambda v, ratio: v <= 0.15,
        peer="pilot_agent_first_cert_s_p50",
        peer_label="pilot-agent",
        digits=3,
    ),
    Goal(
        "agent SDS push after rotation, 10 streams, p99",
        "agent_push_p99_ms",
        "ms",
        "< 20 ms",
        lambda v, ratio: v < 20,
        digits=1,
    ),
    Goal(
        "rotation storm: failed rotations",
        "storm_failed_rotations",
        "",
        "0 (and none expired before renewal)",
        lambda v, ratio: v == 0,
        extra=_storm_clean,
    ),
    Goal(
        "node agent RSS serving 100 pods of 20 accounts (an SDS and a Workload API stream each)",
        "node_agent_rss_mb_100pods",
        "MB",
        "<= 80 MB",
        lambda v, ratio: v <= 80,
        digits=1,
        issue=23,
    ),
    Goal(
        "node agent: a new pod's first SDS certificate (new account, warm agent), p50",
        "node_agent_first_cert_ms_p50",
        "ms",
        "<= 15 ms",
        lambda v, ratio: v <= 15,
        digits=1,
        issue=23,
    ),
    Goal(
        "node agent just started: 100 pods connecting at once, all served",
        "node_agent_reboot_100pods_s",
        "s",
        "<= 2 s",
        lambda v, ratio: v <= 2,
        digits=2,
        issue=23,
    ),
    Goal(
        "thundering herd: all clients served after (CA RSS bound alongside)",
        "herd_all_succeeded_s",
        "s",
        "<= 120 s, CA <= 600 MB",
        lambda v, ratio: v <= 120,
        digits=1,
        extra=_herd_small,
    ),
)


def judge(goal: Goal, r: dict[str, Any]) -> Verdict:
    value = r.get(goal.key)
    peer_value = r.get(goal.peer) if goal.peer else None
    ratio = value / peer_value if value is not None and peer_value else None
    if value is None or (goal.needs_peer and ratio is None):
        return Verdict(goal, value, peer_value, ratio, None)
    met = goal.check(float(value), ratio) and (goal.extra is None or goal.extra(r))
    return Verdict(goal, value, peer_value, ratio, met)


def verdicts(r: dict[str, Any]) -> list[Verdict]:
    return [judge(g, r) for g in GOALS]


def fmt(x: float | None, digits: int = 0, unit: str = "") -> str:
    """`x` with its unit, or "n/a" (no unit) when it was not measured."""
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}" + (f" {unit}" if unit else "")


def _ratio(v: Verdict) -> str:
    return f"{v.ratio:.2f}x" if v.ratio is not None else "n/a"


def table(r: dict[str, Any]) -> list[str]:
    """The goal table (markdown): value, peer figure, ratio, bound, met / not met / not measured."""
    lines = [
        "| goal | value | peer (same run) | ratio | bound | status |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts(r):
        g = v.goal
        peer = f"{g.peer_label} {fmt(v.peer_value, g.digits, g.unit)}" if g.peer else ""
        ratio = _ratio(v) if g.peer else ""
        lines.append(
            f"| {g.name} | {fmt(v.value, g.digits, g.unit)} | {peer} | {ratio} | {g.bound} | "
            f"{v.status} |"
        )
    return lines


def console(r: dict[str, Any]) -> str:
    """One line per goal for the terminal: status, value, ratio to the peer, bound."""
    out = []
    for v in verdicts(r):
        g = v.goal
        status = {True: "met", False: "NOT MET", None: "not measured"}[v.met]
        ratio = f" = {_ratio(v)} {g.peer_label}" if g.peer else ""
        out.append(
            f"{status:>12}  {g.name}: {fmt(v.value, g.digits, g.unit)}{ratio} (goal {g.bound})"
        )
    return "\n".join(out)
