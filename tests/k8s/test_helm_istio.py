"""with-istio on paper and in manifests: deploy/helm/istiod-values.yaml rendered through
Istio's own istiod chart (from the istio.io/istio module the interop suite pins, fetched from
the Go module proxy) turns istiod's CA server off and points every injected proxy's CA_ADDR at
the Service Bulwark's chart creates in with-istio mode, whose certificate carries that name."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.deploy_tools import CHART, REPO, run, tool

ISTIO_MODULE = REPO / "tests" / "interop" / "istio"
ISTIOD_VALUES = REPO / "deploy" / "helm" / "istiod-values.yaml"


def _istiod_chart() -> Path:
    go = os.environ.get("GO") or "go"
    for attempt in ("list", "download"):
        if attempt == "download":
            subprocess.run([go, "mod", "download", "istio.io/istio"], cwd=ISTIO_MODULE, check=True)
        proc = subprocess.run(
            [go, "list", "-m", "-f", "{{.Dir}}", "istio.io/istio"],
            cwd=ISTIO_MODULE,
            capture_output=True,
            text=True,
            check=True,
        )
        chart = Path(proc.stdout.strip()) / "manifests/charts/istio-control/istio-discovery"
        if (chart / "Chart.yaml").exists():
            return chart
    raise AssertionError(f"Istio's istiod chart is not in the istio.io/istio module: {chart}")


def _render(chart: Path, release: str, *args: str | Path) -> list[dict[str, Any]]:
    proc = run([tool("helm"), "template", release, chart, "-n", "istio-system", *args])
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_istiod_values_turn_its_ca_off_and_point_proxies_at_bulwark() -> None:
    istio = _render(_istiod_chart(), "istiod", "-f", ISTIOD_VALUES)
    (istiod,) = [d for d in istio if d["kind"] == "Deployment"]
    (discovery,) = istiod["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in discovery["env"]}
    assert env["ENABLE_CA_SERVER"] == "false"
    maps = {d["metadata"]["name"]: d for d in istio if d["kind"] == "ConfigMap"}
    injector = json.loads(maps["istio-sidecar-injector"]["data"]["values"])
    ca_addr = injector["global"]["caAddress"]
    mesh = yaml.safe_load(maps["istio"]["data"]["mesh"])
    assert mesh["trustDomain"] == "cluster.local"

    bulwark = _render(CHART, "bulwark", "--set", "mode=with-istio")
    (service,) = [d for d in bulwark if d["kind"] == "Service"]
    host, port = ca_addr.rsplit(":", 1)
    assert host == f"{service['metadata']['name']}.istio-system.svc"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    (deploy,) = [d for d in bulwark if d["kind"] == "Deployment"]
    ca_env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert host in ca_env["BULWARK_SERVER_DNS_NAMES"].split(",")
    assert ca_env["TRUST_DOMAIN"] == mesh["trustDomain"]
