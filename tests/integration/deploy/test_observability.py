"""The alerts and the Grafana dashboard only name series that Bulwark exports (checked
against the sources of ca_server/ and agent/), and every dashboard panel has a query.

A series a rule or panel may name before the code exports it goes in NOT_YET_EXPORTED with
why (empty now). The list is checked both ways: a name that appears in the code must leave
the list, so it cannot go stale."""

from __future__ import annotations

import json
import re

import yaml

from tests.support.deploy_tools import REPO

RULES = REPO / "deploy" / "prometheus" / "bulwark.rules.yaml"
CHART_RULES = REPO / "deploy" / "helm" / "bulwark" / "files" / "bulwark.rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "bulwark.json"
NOT_YET_EXPORTED: dict[str, str] = {}
SERIES = re.compile(r"\b((?:citadel_server|istio_agent|bulwark_ca)_[a-z0-9_]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _sources() -> str:
    return "\n".join(
        p.read_text() for d in ("ca_server", "agent") for p in sorted((REPO / d).rglob("*.py"))
    )


def _exported(name: str, code: str) -> bool:
    """Whether `name` (as Prometheus stores it) is declared somewhere in the code."""
    stems = {name}
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            stems.add(name.removesuffix(suffix))
    if name.startswith("istio_agent_"):  # agent/metrics.py prefixes the family name
        stems |= {s.removeprefix("istio_agent_") for s in stems}
    return any(f'"{stem}"' in code for stem in stems)


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]]


def test_rules_and_dashboard_name_only_exported_series() -> None:
    code = _sources()
    used = {m for expr in _rule_exprs() + _dashboard_exprs() for m in SERIES.findall(expr)}
    unknown = sorted(m for m in used if not _exported(m, code) and m not in NOT_YET_EXPORTED)
    assert not unknown, f"series named by alerts/dashboard but exported nowhere: {unknown}"


def test_not_yet_exported_list_is_current() -> None:
    code = _sources()
    landed = sorted(m for m in NOT_YET_EXPORTED if _exported(m, code))
    assert not landed, f"now exported, remove from NOT_YET_EXPORTED: {landed}"


def test_plain_rules_file_is_the_charts() -> None:
    assert RULES.resolve() == CHART_RULES.resolve()
    assert yaml.safe_load(RULES.read_text())["groups"]


def test_dashboard_covers_what_issue_15_asks() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in (
        "issuance rate",
        "refusals by reason",
        "p50 / p99",
        "record commit",
        "time to expiry",
        "root expiry",
        "signing chain",
        "agents' soonest",
        "rotation",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel
        assert panel["datasource"]["uid"] == "${datasource}"
