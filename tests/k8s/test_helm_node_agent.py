"""The chart's node mode applied to the real API server (issue 23, `make test-k8s`).

`helm install` with ci/node-agent-values.yaml: the API server accepts the node agent's
DaemonSet, its RBAC, the CSIDriver and the SPIFFE CSI driver's DaemonSet (no kubelet runs, so
no pod starts); the node agent's service account may watch pods and may not read Secrets (the
API server's own authorizer answers); and Istio's istiod chart, rendered with the injection
values the chart ships in its ConfigMap, carries the `bulwark-node` template by default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from lightkube import Client
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import ConfigMap
from lightkube.resources.storage_v1 import CSIDriver

from tests.k8s.test_helm_istio import _istiod_chart, _render
from tests.support.deploy_tools import CHART, run, tool
from tests.support.kube_harness import ControlPlane


def helm(control_plane: ControlPlane, home: Path, *args: str | Path) -> str:
    env = {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = run([tool("helm"), *args, "--kubeconfig", control_plane.admin_kubeconfig], env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def can_i(control_plane: ControlPlane, namespace: str, verb: str, resource: str) -> bool:
    proc = control_plane.kubectl_run(
        "auth", "can-i", verb, resource, "--all-namespaces",
        "--as", f"system:serviceaccount:{namespace}:bulwark-node-agent",
    )  # fmt: skip
    return proc.stdout.strip() == "yes"


def test_node_mode_installs_into_the_api_server(
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    ns = make_namespace("node-agent")
    helm(
        control_plane,
        tmp_path,
        "install",
        "bulwark",
        CHART,
        "-n",
        ns,
        "-f",
        CHART / "ci" / "node-agent-values.yaml",
    )
    try:
        agent = admin_client.get(DaemonSet, "bulwark-node-agent", namespace=ns)
        assert agent.spec is not None and agent.spec.template.spec is not None
        assert agent.spec.template.spec.hostPID is True
        csi = admin_client.get(DaemonSet, "spiffe-csi-driver", namespace=ns)
        assert csi.spec is not None
        driver = admin_client.get(CSIDriver, "csi.spiffe.io")
        assert driver.spec is not None and driver.spec.volumeLifecycleModes == ["Ephemeral"]
        assert can_i(control_plane, ns, "watch", "pods") and can_i(
            control_plane, ns, "list", "pods"
        )
        assert not can_i(control_plane, ns, "get", "secrets")
        assert not can_i(control_plane, ns, "create", "pods")

        snippet = admin_client.get(ConfigMap, "bulwark-node-agent-istio-injection", namespace=ns)
        assert snippet.data is not None
        values = tmp_path / "istiod-node-agent-values.yaml"
        values.write_text(snippet.data["istiod-values.yaml"])
        istio = _render(_istiod_chart(), "istiod", "-f", values)
        maps = {d["metadata"]["name"]: d for d in istio if d["kind"] == "ConfigMap"}
        injector = yaml.safe_load(maps["istio-sidecar-injector"]["data"]["config"])
        assert injector["defaultTemplates"] == ["sidecar", "bulwark-node"]
        template = yaml.safe_load(injector["templates"]["bulwark-node"])
        volume = template["spec"]["volumes"][0]
        assert volume == {
            "name": "workload-socket",
            "csi": {"driver": "csi.spiffe.io", "readOnly": True},
        }
        assert "workload-socket" in json.dumps(injector["templates"]["sidecar"])  # what it replaces
    finally:
        helm(control_plane, tmp_path, "uninstall", "bulwark", "-n", ns)
