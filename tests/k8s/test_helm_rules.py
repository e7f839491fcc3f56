"""The alerts (deploy/prometheus/bulwark.rules.yaml, embedded in the chart's PrometheusRule)
checked and unit-tested with promtool built from Prometheus's Go module
(tests/k8s/build-tool.sh promtool): every alert has a firing and a quiet case in
tests/integration/deploy/bulwark.rules.test.yaml."""

from __future__ import annotations

import yaml

from tests.support.deploy_tools import REPO, run, tool

RULES = REPO / "deploy" / "prometheus" / "bulwark.rules.yaml"
TESTS = REPO / "tests" / "integration" / "deploy" / "bulwark.rules.test.yaml"


def test_rules_file_passes_promtool_check() -> None:
    proc = run([tool("promtool"), "check", "rules", RULES])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 rules found" in proc.stdout, proc.stdout


def test_every_alert_passes_promtool_test_rules() -> None:
    proc = run([tool("promtool"), "test", "rules", TESTS])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts
    # The two expiry alerts are quiet for the instances whose material is far from expiry
    # (checked through exp_alerts listing only the other instance).
    assert alerts - quiet <= {"BulwarkRootCertExpiringSoon", "BulwarkSigningChainExpiringSoon"}
