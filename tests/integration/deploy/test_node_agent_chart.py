"""The chart's node mode rendered with `helm template` (issue 23): nodeAgent.enabled gives the
node agent's DaemonSet (hostPID, its socket directory on a hostPath, a projected token for
istio-ca), RBAC that reads pods and nothing else, the CA's trust in the node agent's account,
the upstream SPIFFE CSI driver (CSIDriver csi.spiffe.io and its DaemonSet on the same host
directory, published images), and Istio's injection template mounting the socket at
/run/secrets/workload-spiffe-uds. The DaemonSet's arguments are read by the agent's own
settings table, so a flag the agent does not know fails here, not on a node. Applying it to a
real API server is tests/k8s/test_helm_node_agent.py (make test-k8s)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import yaml

from agent.cli.commands import config_from, register
from certs.cli.parser import BulwarkParser
from tests.support.deploy_tools import CHART, run, tool

VALUES = CHART / "ci" / "node-agent-values.yaml"


def render(*args: str) -> list[dict[str, Any]]:
    proc = run([tool("helm"), "template", "bulwark", CHART, "-n", "istio-system", *args])
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render("-f", str(VALUES))


def test_node_mode_is_off_by_default() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render()}
    assert not [k for k in kinds if k[0] in ("DaemonSet", "CSIDriver") or "node-agent" in k[1]]


def test_the_node_agent_daemonset(docs: list[dict[str, Any]]) -> None:
    pod = named(docs, "DaemonSet", "bulwark-node-agent")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["serviceAccountName"] == "bulwark-node-agent"
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["socket-dir"]["hostPath"] == {
        "path": "/run/bulwark/workload-spiffe-uds",
        "type": "DirectoryOrCreate",
    }
    (token,) = volumes["istio-token"]["projected"]["sources"]
    assert token["serviceAccountToken"]["audience"] == "istio-ca"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["socket-dir"] == "/var/run/bulwark-node"
    assert container["command"] == ["python", "-m", "agent"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"


def test_the_daemonset_arguments_are_a_valid_node_agent_configuration(
    docs: list[dict[str, Any]],
) -> None:
    (container,) = named(docs, "DaemonSet", "bulwark-node-agent")["spec"]["template"]["spec"][
        "containers"
    ]
    parser = BulwarkParser(prog="python -m")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", *container["args"]])
    assert isinstance(args, argparse.Namespace)
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    env.update(
        NODE_NAME="node-1", POD_NAMESPACE="istio-system", SERVICE_ACCOUNT="bulwark-node-agent"
    )
    env["KUBERNETES_SERVICE_HOST"] = "10.0.0.1"  # what every pod is given
    config = config_from(args, env)
    assert (config.mode, config.attestor, config.node_name) == ("node", "k8s", "node-1")
    assert str(config.socket_path) == "/var/run/bulwark-node/socket"
    assert config.ca_addr == "istiod.istio-system.svc:15012"
    assert config.mtls_ca_addr == "istiod.istio-system.svc:15013"


def test_rbac_reads_pods_and_nothing_else(docs: list[dict[str, Any]]) -> None:
    role = named(docs, "ClusterRole", "bulwark-node-agent-istio-system")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = named(docs, "ClusterRoleBinding", "bulwark-node-agent-istio-system")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "bulwark-node-agent", "namespace": "istio-system"}
    ]


def test_the_ca_trusts_the_node_agents_account(docs: list[dict[str, Any]]) -> None:
    (ca,) = named(docs, "Deployment", "bulwark-ca")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in ca["env"]}
    assert env["CA_TRUSTED_NODE_ACCOUNTS"] == "istio-system/bulwark-node-agent"


def test_the_spiffe_csi_driver_shares_the_socket_directory(docs: list[dict[str, Any]]) -> None:
    driver = named(docs, "CSIDriver", "csi.spiffe.io")["spec"]
    assert driver == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "fsGroupPolicy": "None",
        "volumeLifecycleModes": ["Ephemeral"],
    }
    pod = named(docs, "DaemonSet", "spiffe-csi-driver")["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    assert images["spiffe-csi-driver"].startswith("ghcr.io/spiffe/spiffe-csi-driver:")
    assert images["node-driver-registrar"].startswith(
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:"
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes["node-agent-socket-dir"]["hostPath"]["path"] == "/run/bulwark/workload-spiffe-uds"
    )
    driver_container = next(c for c in pod["containers"] if c["name"] == "spiffe-csi-driver")
    args = driver_container["args"]
    assert args[args.index("-workload-api-socket-dir") + 1] == "/workload-api-socket-dir"
    assert {
        "name": "node-agent-socket-dir",
        "mountPath": "/workload-api-socket-dir",
        "readOnly": True,
    } in driver_container["volumeMounts"]


def test_istios_injection_template_mounts_the_node_socket(docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(
        named(docs, "ConfigMap", "bulwark-node-agent-istio-injection")["data"]["istiod-values.yaml"]
    )
    injector = values["sidecarInjectorWebhook"]
    assert injector["defaultTemplates"] == ["sidecar", "bulwark-node"]
    template = yaml.safe_load(injector["templates"]["bulwark-node"])["spec"]
    (proxy,) = template["containers"]
    assert proxy["name"] == "istio-proxy"
    assert proxy["volumeMounts"] == [
        {
            "name": "workload-socket",
            "mountPath": "/run/secrets/workload-spiffe-uds",
            "readOnly": True,
        }
    ]
    assert template["volumes"] == [
        {"name": "workload-socket", "csi": {"driver": "csi.spiffe.io", "readOnly": True}}
    ]
