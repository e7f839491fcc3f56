"""Every query of the Grafana dashboard (deploy/grafana/bulwark.json) returns data over series
scraped from a real CA and a real agent: the scrapes become promtool input series, each query
becomes an alert that fires only when the query yields at least one non-NaN sample, and
`promtool test rules` (built from Prometheus's Go module) evaluates them.

Queries naming a series listed in tests/deploy/test_observability.NOT_YET_EXPORTED cannot
return data yet; they are reported by name, and the test fails if one of them does."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import yaml
from spiffe._proto import workload_pb2, workload_pb2_grpc

from certs.csr import build_csr
from certs.keys import KeyType, generate_key
from certs.spiffe_id import SpiffeId
from tests.integration.deploy.test_observability import DASHBOARD, NOT_YET_EXPORTED
from tests.support.agent_process import start_agent_process
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa, start_ca
from tests.support.deploy_tools import run, tool

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")
SCRAPES = 5
CA_LABELS = 'job="bulwark-ca", instance="10.0.0.1:15014"'
AGENT_LABELS = 'job="bulwark-agents", namespace="demo", pod="frontend-0"'


def _scrape(url: str, extra: str) -> dict[str, float]:
    """One /metrics scrape: series (with the target labels Prometheus would add) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if line.startswith("#") or not match:
            continue
        name, labels, value = match.groups()
        inner = labels[1:-1] if labels else ""
        out[f"{name}{{{', '.join(filter(None, [inner, extra]))}}}"] = float(value)
    return out


def _issue(ca: RunningCa) -> None:
    """One certificate for demo/backend and one refused request (a token that is not one)."""
    me = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/backend")
    token = ca.mint_token("demo", "backend")
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        create_certificate(chan, build_csr(generate_key(KeyType.EC_P256), me), token=token)
        try:
            create_certificate(chan, build_csr(generate_key(KeyType.EC_P256), me), token="x.y.z")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            raise AssertionError("a garbage token was accepted")


def _drain(stream: grpc.Future) -> None:
    try:
        for _ in stream:
            pass
    except grpc.RpcError:
        pass  # the channel closed at the end of the test


def _input_series(scrapes: list[dict[str, float]]) -> list[dict[str, str]]:
    names = sorted({name for scrape in scrapes for name in scrape})
    series = []
    for name in names:
        values = [repr(s[name]) if name in s else "_" for s in scrapes]
        series.append({"series": name, "values": " ".join(values)})
    return series


def _queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (f"{p['title']} [{t['refId']}]", t["expr"])
        for p in panels
        if p["type"] != "row"
        for t in p["targets"]
    ]


def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca")
    work = tmp_path / "agent"
    work.mkdir()
    agent = start_agent_process(ca, work, extra_env={"SECRET_TTL": "6s"})
    chan = grpc.insecure_channel(f"unix://{agent.socket}")
    try:
        agent.wait_ready()
        # A workload streaming its SVID over the Workload API: the agent pushes each rotation.
        stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(chan).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)
        )
        threading.Thread(target=_drain, args=(stream,), daemon=True).start()
        scrapes = []
        for _ in range(SCRAPES):
            _issue(ca)
            time.sleep(3.5)  # the agent renews its 6 s certificate at about half-life
            merged = _scrape(f"{ca.admin_url}/metrics", CA_LABELS)
            merged |= _scrape(f"{agent.status_url}/metrics", AGENT_LABELS)
            scrapes.append(merged)
    finally:
        chan.close()
        agent.stop()
        ca.stop()

    queries = _queries()
    pending = {title for title, expr in queries if any(name in expr for name in NOT_YET_EXPORTED)}
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"alert": f"Q{i}", "expr": f"count(({expr}) > -Inf)"}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    eval_time = f"{SCRAPES - 1}m"
    cases = {
        "rule_files": ["dashboard.rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _input_series(scrapes),
                "alert_rule_test": [
                    {
                        "eval_time": eval_time,
                        "alertname": f"Q{i}",
                        "exp_alerts": [] if title in pending else [{"exp_labels": {}}],
                    }
                    for i, (title, _) in enumerate(queries)
                ],
            }
        ],
    }
    test_file = tmp_path / "dashboard.test.yaml"
    test_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    proc = run([tool("promtool"), "test", "rules", test_file])
    names = "\n".join(f"Q{i}: {title}" for i, (title, _) in enumerate(queries))
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nqueries:\n{names}"
    assert len(queries) - len(pending) >= 15, pending
