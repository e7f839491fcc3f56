"""The goal and report logic of `make bench`, in-process (no servers, no Go build).

Covers issue 18's "Must show": every goal printed with its ratio and met / not met, and a run
that lacks a peer figure (BENCH_ONLY, a failed phase) printing "not measured" instead of
crashing or counting as met.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import goals, report, run
from bench.ca_compare import aggregate

BENCH = Path(__file__).resolve().parents[3] / "bench"
RESULTS = BENCH / "results"
# latest.json as the bench wrote it before issue 18 (no Istio figures, no spreads)
OLD_RESULTS = BENCH / "fixtures" / "latest-before-issue-18.json"


def _row(mode: str, c: int, cpu: float, rate: float, p99: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "concurrency": c,
        "certs": 1000,
        "elapsed_s": 1000 / rate,
        "server_cpu_s": cpu * 1000 / 1e6,
        "failures": 0,
        "failures_warmup": 0,
        "certs_per_s": rate,
        "server_cpu_us_per_cert": cpu,
        "server_switches_per_cert": 3.0,
        "client_cpu_us_per_cert": 100.0,
        "server_rss_mb": 80.0,
        "p50_ms": p99 / 3,
        "p99_ms": p99,
        "max_ms": p99 * 2,
    }


def full_run() -> dict[str, Any]:
    rows = {
        "ca_runs": [aggregate([_row("grpc", 32, 700.0, 2300.0, 30.0)])],
        "istio_ca_runs": [aggregate([_row("grpc", 32, 500.0, 2900.0, 27.0)])],
        "cfssl_runs": [aggregate([_row("cfssl", 32, 370.0, 4700.0, 40.0)])],
        "ca_batch_runs": [aggregate([{**_row("batch", 32, 380.0, 3700.0, 90.0), "callers": 4}])],
    }
    return {
        "machine": {"cores": 2, "cpu_model": "test", "loadavg_start": "0 0 0"},
        "commit": "0123456789abcdef",
        "started_utc": "2026-12-01 00:00 UTC",
        "headline_concurrency": 32,
        "quick": False,
        **rows,
        **run.headline_keys(rows["ca_runs"][0], rows["istio_ca_runs"][0], rows["cfssl_runs"][0]),
        **run.batch_keys(rows["ca_batch_runs"][0]),
        "crypto_limit_us_per_cert": 130.0,
        "agent": {"starts": 7, "floor_anon_mb": 20.0},
        "pilot_agent": {"anon_mb": 12.0},
        "agent_rss_mb": 44.0,
        "agent_anon_mb": 20.0,
        "agent_floor_rss_mb": 43.0,
        "agent_first_cert_s_p50": 0.12,
        "agent_push_p99_ms": 7.0,
        "agent_idle_cpu_pct": 0.1,
        "pilot_agent_rss_mb": 33.0,
        "pilot_agent_first_cert_s_p50": 0.03,
        "storm": {
            "workloads": 2000,
            "rotations": 12000,
            "failed_rotations": 0,
            "expired_before_renewal": 0,
            "server_max_rss_mb": 200,
            "p99_ms": 20.0,
        },
        "storm_failed_rotations": 0,
        "storm_ttl_s": 60,
        "storm_duration_s": 180.0,
        "herd": {
            "workloads": 20000,
            "within_istio_retries": 20000,
            "needed_agent_backoff": 0,
            "codes": {"OK": 20000, "RESOURCE_EXHAUSTED": 5},
        },
        "node_agent": {
            "pods": 100,
            "accounts": 20,
            "connections": 100,
            "identities": 20,
            "attestor": "unix",
            "rss_mb_100pods": 70.0,
            "reboot_100pods_s": 0.6,
            "first_cert_ms_p50": 12.0,
            "first_cert_shared_ms_p50": 4.0,
        },
        "node_agent_rss_mb_100pods": 70.0,
        "node_agent_first_cert_ms_p50": 12.0,
        "node_agent_reboot_100pods_s": 0.6,
        "herd_max_rss_mb": 330,
        "herd_all_succeeded_s": 23.0,
        "herd_rss_bound_mb": 600,
        "herd_time_bound_s": 120.0,
        "ca_hsm_cpu_us_per_cert": 1100.0,
        "ca_filekey_cpu_us_per_cert": 1000.0,
        "ca_hsm_certs_per_s": 1800.0,
        "ca_filekey_certs_per_s": 2000.0,
    }


def status(r: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
    return {v.goal.key: (v.status, v.ratio) for v in goals.verdicts(r)}


def test_every_goal_met_with_its_ratio_to_the_peer() -> None:
    s = status(full_run())
    for key, ratio in (
        ("ca_cpu_us_per_cert", 1.4),
        ("ca_certs_per_s", 2300 / 2900),
        ("ca_batch_cpu_us_per_cert", 380 / 500),
        ("ca_batch_certs_per_s", 3700 / 2900),
        ("agent_rss_mb", 44 / 33),
        ("agent_first_cert_s_p50", 4.0),
        ("ca_hsm_cpu_us_per_cert", 1.1),
        ("ca_hsm_certs_per_s", 0.9),
    ):
        assert s[key][0] == "met", key
        assert s[key][1] == pytest.approx(ratio), key
    assert {v for v, _ in s.values()} == {"met"}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ca_cpu_us_per_cert", 1000.0, "met"),  # exactly 2.0x Istio's 500 (issue 23)
        ("ca_cpu_us_per_cert", 1001.0, "**not met**"),
        ("ca_batch_cpu_us_per_cert", 400.0, "met"),  # exactly 0.8x Istio's 500 per call
        ("ca_batch_cpu_us_per_cert", 401.0, "**not met**"),
        ("ca_batch_certs_per_s", 3625.0, "met"),  # exactly 1.25x Istio's 2,900
        ("ca_batch_certs_per_s", 3600.0, "**not met**"),
        ("ca_certs_per_s", 2175.0, "met"),  # exactly 0.75x Istio's 2,900
        ("ca_certs_per_s", 2000.0, "**not met**"),
        ("agent_rss_mb", 45.0, "**not met**"),  # 1.36x pilot-agent's 33
        ("agent_first_cert_s_p50", 0.2, "**not met**"),
        ("agent_push_p99_ms", 20.0, "**not met**"),
        ("storm_failed_rotations", 1, "**not met**"),
        ("herd_all_succeeded_s", 121.0, "**not met**"),
        ("herd_max_rss_mb", 601, "**not met**"),  # the herd goal's memory bound
        ("node_agent_rss_mb_100pods", 80.0, "met"),
        ("node_agent_rss_mb_100pods", 80.5, "**not met**"),
        ("node_agent_first_cert_ms_p50", 15.5, "**not met**"),
        ("node_agent_reboot_100pods_s", 2.1, "**not met**"),
    ],
)
def test_bounds(key: str, value: float, expected: str) -> None:
    r = full_run()
    r[key] = value
    goal = "herd_all_succeeded_s" if key == "herd_max_rss_mb" else key
    assert status(r)[goal][0] == expected


def test_storm_with_an_expired_certificate_is_not_met() -> None:
    r = full_run()
    r["storm"]["expired_before_renewal"] = 2
    assert status(r)["storm_failed_rotations"][0] == "**not met**"


@pytest.mark.parametrize(
    "missing",
    ["istio_ca_cpu_us_per_cert", "istio_ca_certs_per_s", "pilot_agent_rss_mb"],
)
def test_missing_peer_figure_is_not_measured_not_a_crash(missing: str) -> None:
    r = full_run()
    del r[missing]
    verdict = next(v for v in goals.verdicts(r) if v.goal.peer == missing)
    assert verdict.status == "not measured"
    assert verdict.met is None
    line = next(x for x in goals.table(r) if x.startswith(f"| {verdict.goal.name} |"))
    assert "n/a" in line and "not measured" in line
    assert "not measured" in goals.console(r)


def test_peer_figure_of_zero_is_not_measured() -> None:
    r = full_run()
    r["istio_ca_certs_per_s"] = 0.0
    assert status(r)["ca_certs_per_s"] == ("not measured", None)


def test_first_certificate_goal_stands_without_pilot_agent() -> None:
    """The start goal is absolute: pilot-agent's figure is shown beside it, not needed."""
    r = full_run()
    del r["pilot_agent_first_cert_s_p50"]
    assert status(r)["agent_first_cert_s_p50"] == ("met", None)


@pytest.mark.parametrize("only", ["ca", "agent", "node", "fleet"])
def test_partial_run_renders(only: str) -> None:
    r = full_run()
    keep = {
        "ca": ("ca_", "istio_", "cfssl_", "crypto"),
        "agent": ("agent", "pilot_"),
        "node": ("node_agent",),
        "fleet": ("storm", "herd"),
    }[only]
    base = ("machine", "commit", "started_utc", "headline_concurrency", "quick")
    partial = {k: v for k, v in r.items() if k in base or k.startswith(keep)}
    partial["only"] = only
    md = report.markdown(partial)
    assert "not measured" in md
    assert f"only {only}" in md
    assert ("Bulwark / Istio" in md) == (only == "ca")
    assert ("| Bulwark agent | pilot-agent |" in md) == (only == "agent")
    assert ("| RSS with 100 pods held (MB) | 70.0 |" in md) == (only == "node")


def test_markdown_shows_each_figure_as_a_ratio_to_its_peer() -> None:
    md = report.markdown(full_run())
    assert (
        "| server CPU per certificate (us) | 700 (700-700) | 500 (500-500) | 370 (370-370) | 1.40x | 1.89x |"
        in md
    )
    assert "| RSS after first certificate (MB) | 44.0 | 33.0 | 1.33x |" in md
    assert "<= 2.0x Istio's CA | met |" in md
    assert (
        "| server CPU per certificate (us) | 380 (380-380) | 700 (700-700) | 500 (500-500) | 0.76x |"
        in md
    )


def test_overhead_is_the_per_call_cpu_above_the_required_work_floor() -> None:
    r = full_run()
    r["floor"] = {
        "bare_grpc_us_per_call": 300.0,
        "bare_grpc_calls_per_s": 3000.0,
        "required_work_us_per_call": 520.0,
        "inprocess_issue_us": 250.0,
        "record_us": 80.0,
    }
    assert run.overhead_us(r) == 180.0
    r["ca_overhead_us_per_cert"] = run.overhead_us(r)
    assert "| ca_overhead_us_per_cert" in report.markdown(r)
    del r["floor"]
    assert run.overhead_us(r) is None


def test_results_written_before_this_change_still_render() -> None:
    """latest.json from the previous bench (no Istio figures, no spreads) renders."""
    old = json.loads(OLD_RESULTS.read_text())
    md = report.markdown(old)
    assert "not measured" in md  # the Istio and pilot-agent ratios


def test_aggregate_is_median_with_spread() -> None:
    rows = [
        _row("grpc", 8, cpu, rate, 10.0) for cpu, rate in ((900, 1000), (700, 1400), (800, 1100))
    ]
    row = aggregate(rows)
    assert row["server_cpu_us_per_cert"] == 800
    assert row["spread"]["server_cpu_us_per_cert"] == [700, 900]
    assert row["certs_per_s"] == 1100
    assert row["rounds"] == 3 and row["certs"] == 3000


def test_write_makes_both_charts(tmp_path: Path) -> None:
    r = full_run()
    report.write(tmp_path, r, {"bulwark c=32": [1.0, 2.0, 3.0], "istio c=32": [1.0, 1.5]})
    for name in ("latest.json", "latest.md", "latency.png", "ca_by_concurrency.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "latest.json").read_text())["istio_ca_cpu_us_per_cert"] == 500


def test_bench_only_selects_phases() -> None:
    assert run.selected_phases("") == ["ca", "hsm", "agent", "node", "fleet"]
    assert run.selected_phases("hsm") == ["hsm"]
    assert run.selected_phases("agent, ca") == ["ca", "agent"]
    assert run.selected_phases("node") == ["node"]
    with pytest.raises(SystemExit, match="unknown phase"):
        run.selected_phases("cpu")


def test_quick_or_partial_runs_never_write_the_committed_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BENCH_OUT", raising=False)
    monkeypatch.setattr(run, "QUICK", True)
    assert run.output_dir(["ca", "hsm", "agent", "node", "fleet"]) != run.RESULTS
    monkeypatch.setattr(run, "QUICK", False)
    assert run.output_dir(["ca", "hsm", "agent", "node", "fleet"]) == run.RESULTS
    assert run.output_dir(["ca", "hsm", "agent", "fleet"]) != run.RESULTS
    assert run.output_dir(["agent"]) != run.RESULTS


def test_required_work_floor_is_shown_as_a_ratio_to_istio() -> None:
    """The least this stack costs per certificate (required-work server + record) is set
    against Istio's CA, so a goal out of reach shows its floor in the same run."""
    r = full_run()
    r["floor"] = {
        "bare_grpc_us_per_call": 300.0,
        "bare_grpc_calls_per_s": 3000.0,
        "bare_grpc_switches_per_call": 14.0,
        "required_work_us_per_call": 520.0,
        "required_work_calls_per_s": 2000.0,
        "inprocess_issue_us": 250.0,
        "record_us": 80.0,
    }
    md = report.markdown(r)
    assert "| 600 (1.20x) |" in md
    del r["floor"]["required_work_us_per_call"]
    assert "required-work floor" not in report.markdown(r)


def test_committed_results_render_with_every_goal_measured() -> None:
    """The committed full run is complete: no goal of the issues it covers reads "not
    measured" (a run committed before issue 23 has no batch or node figures, before 24 no HSM
    phase)."""
    current = json.loads((RESULTS / "latest.json").read_text())
    covered = {18}
    issue_23 = ("ca_batch_cpu_us_per_cert", "node_agent_rss_mb_100pods")
    covered |= {23} if all(key in current for key in issue_23) else set()
    covered |= {24} if "ca_hsm_certs_per_s" in current else set()
    verdicts = [v for v in goals.verdicts(current) if v.goal.issue in covered]
    assert verdicts and all(v.met is not None for v in verdicts)
    report.markdown(current)  # renders
