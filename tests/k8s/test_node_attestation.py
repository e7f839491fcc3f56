"""The node agent's k8s attestor against the real kube-apiserver, with real cgroups (issue 23).

No kubelet runs: pods are API objects bound to a node (`spec.nodeName`) whose status the test
writes through the status subresource, and their "containers" are real processes placed in
real cgroups named as the kubelet's cgroupfs driver names them
(`kubepods/besteffort/pod<uid>/<container-id>`, tests/support/pod_cgroups.py). A real CA
reviews tokens with the same API server and binds impersonation to the node; the node agent
(`python -m agent run --mode node --attestor k8s`) watches the pods of node-a with its own
service account's RBAC and serves callers through py-spiffe and real Envoys.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import Namespace
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

from tests.k8s.conftest import CA_NAMESPACE, create_service_account, request_token
from tests.support.agent import short_dir
from tests.support.ca_process import RunningCa, start_ca
from tests.support.envoy import (
    EnvoyProcess,
    client_bootstrap,
    http_get,
    local_upstream,
    server_bootstrap,
)
from tests.support.kube_harness import API_AUDIENCE, ControlPlane
from tests.support.node_agent import NodeAgentProcess, fetch_command, start_node_agent
from tests.support.openssl import openssl
from tests.support.pod_cgroups import NodePod, PodProcesses

NODE = "node-a"
OTHER_NODE = "node-b"


@dataclass
class Cluster:
    system: str
    app: str
    ca: RunningCa
    node: NodeAgentProcess
    pods: PodProcesses

    def spiffe_id(self, account: str) -> str:
        return f"spiffe://cluster.local/ns/{self.app}/sa/{account}"

    def fetch(self, pod: NodePod, *what: str) -> dict[str, object]:
        """The spiffe package's answer to a caller running inside `pod`'s container."""
        process = self.pods.spawn(pod, fetch_command(self.node.socket, *what), stdout=-1, text=True)
        out, _ = process.communicate(timeout=60)
        result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return result


@pytest.fixture(scope="module")
def cluster(
    control_plane: ControlPlane,
    admin_client: Client,
    ca_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    suffix = uuid.uuid4().hex[:6]
    system, app = f"nodesys-{suffix}", f"nodeapp-{suffix}"
    for ns in (system, app):
        admin_client.create(Namespace(metadata=ObjectMeta(name=ns)))
    create_service_account(admin_client, system, "node-agent")
    for account in ("frontend", "backend", "lonely"):
        create_service_account(admin_client, app, account)
    _pod_reader(admin_client, system, suffix)
    pods = PodProcesses(admin_client)
    home = pods.create(system, "node-agent", NODE)  # the node agent's own pod: its token's binding
    ca_token = request_token(
        admin_client, system, "node-agent", audiences=["istio-ca"], pod=(home.name, home.uid)
    )
    api_token = request_token(
        admin_client, system, "node-agent", audiences=[API_AUDIENCE], pod=(home.name, home.uid)
    )
    base = tmp_path_factory.mktemp("node-attestation")
    ca = start_ca(
        base / "ca",
        "--kubeconfig", str(ca_kubeconfig), "--kube-namespace", CA_NAMESPACE,
        "--kube-identity", f"node-test-{suffix}", "--trusted-node-accounts", f"{system}/node-agent",
        env={"KUBECONFIG": ""},
    )  # fmt: skip
    with short_dir() as work:
        kubeconfig = control_plane.write_token_kubeconfig(
            work / "node-agent.kubeconfig", api_token, namespace=system
        )
        node = start_node_agent(
            ca,
            work,
            attestor="k8s",
            token=ca_token,
            namespace=system,
            args=("--node-name", NODE, "--kubeconfig", str(kubeconfig), "--attest-timeout", "3s"),
        )
        try:
            node.wait_until(
                lambda: node.get("/healthz/ready").strip() == "ready", what="pods listed"
            )
            yield Cluster(system, app, ca, node, pods)
        finally:
            pods.close()
            node.stop()
            ca.stop()


def _pod_reader(client: Client, system: str, suffix: str) -> None:
    """What the chart grants the node agent: get, list and watch pods."""
    name = f"bulwark-node-agent-{suffix}"
    client.create(
        ClusterRole(
            metadata=ObjectMeta(name=name),
            rules=[PolicyRule(apiGroups=[""], resources=["pods"], verbs=["get", "list", "watch"])],
        )
    )
    client.create(
        ClusterRoleBinding(
            metadata=ObjectMeta(name=name),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
            subjects=[Subject(kind="ServiceAccount", name="node-agent", namespace=system)],
        )
    )


def test_pods_of_two_accounts_get_their_own_svids(cluster: Cluster, tmp_path: Path) -> None:
    front = cluster.pods.create(cluster.app, "frontend", NODE)
    back = cluster.pods.create(cluster.app, "backend", NODE)
    for pod, account in ((front, "frontend"), (back, "backend")):
        svid = cluster.fetch(pod, "x509")
        assert svid.get("spiffe_id") == cluster.spiffe_id(account), svid
        (tmp_path / "chain.pem").write_text(str(svid["chain"]))
        openssl("verify", "-CAfile", str(cluster.ca.root_cert_path), str(tmp_path / "chain.pem"))
    holders = cluster.node.identities()
    assert holders[cluster.spiffe_id("frontend")] == [f"{cluster.app}/{front.name}"]


@pytest.mark.slow
def test_real_envoys_in_two_pods_talk_mtls_with_their_own_identities(cluster: Cluster) -> None:
    client_pod = cluster.pods.create(cluster.app, "frontend", NODE)
    server_pod = cluster.pods.create(cluster.app, "backend", NODE)
    frontend, backend = cluster.spiffe_id("frontend"), cluster.spiffe_id("backend")
    with short_dir() as work, local_upstream() as upstream:
        server = EnvoyProcess(
            "backend",
            work,
            server_bootstrap(
                node="backend",
                socket=cluster.node.socket,
                upstream_port=upstream,
                client_spiffe_id=frontend,
            ),
            preexec=cluster.pods.joiner(server_pod),
        ).start()
        try:
            client = EnvoyProcess(
                "frontend",
                work,
                client_bootstrap(
                    node="frontend",
                    socket=cluster.node.socket,
                    server_port=server.port,
                    server_spiffe_id=backend,
                ),
                preexec=cluster.pods.joiner(client_pod),
            ).start()
            try:
                status, body = http_get(client.port, "/hello")
                assert status == 200, body
                assert f"URI={frontend}" in json.loads(body)["xfcc"]
                assert backend in str(server.served_certificate()["subject_alt_names"])
                assert frontend in str(client.served_certificate()["subject_alt_names"])
            finally:
                client.stop()
        finally:
            server.stop()


def test_a_pod_on_another_node_is_refused(cluster: Cluster) -> None:
    elsewhere = cluster.pods.create(cluster.app, "lonely", OTHER_NODE)
    refused = cluster.fetch(elsewhere, "raw-x509")
    assert refused["code"] == "PERMISSION_DENIED", refused
    assert f"pod uid {elsewhere.uid}, which is not a pod of node {NODE}" in str(refused["error"])


def test_a_deleted_pod_is_refused(cluster: Cluster) -> None:
    gone = cluster.pods.create(cluster.app, "frontend", NODE)
    cluster.pods.delete(gone)
    cluster.node.wait_until(
        lambda: cluster.fetch(gone, "raw-x509").get("code") == "PERMISSION_DENIED"
    )


def test_a_host_process_is_refused_naming_its_cgroup(cluster: Cluster) -> None:
    from tests.support.node_agent import run_as

    done = run_as(0, 0, fetch_command(cluster.node.socket, "raw-x509"))
    refused = json.loads(done.stdout.strip().splitlines()[-1])
    assert refused["code"] == "PERMISSION_DENIED", refused
    assert "is not in a Kubernetes pod: its cgroup is" in refused["error"]


def test_a_container_the_status_does_not_list_is_refused_after_the_wait(cluster: Cluster) -> None:
    pod = cluster.pods.create(cluster.app, "frontend", NODE)
    stranger = NodePod(
        pod.namespace, pod.name, pod.uid, pod.service_account, NODE
    )  # new container id
    refused = cluster.fetch(stranger, "raw-x509")
    assert refused["code"] == "PERMISSION_DENIED"
    assert "does not list that container in its status" in str(refused["error"])


def test_a_new_container_waits_for_its_status(cluster: Cluster) -> None:
    pod = cluster.pods.create(cluster.app, "backend", NODE, running=False)
    caller = cluster.pods.spawn(
        pod, fetch_command(cluster.node.socket, "x509"), stdout=-1, text=True
    )
    time.sleep(0.5)  # the process has connected; the kubelet writes the status a moment later
    cluster.pods.set_running(pod)
    out, _ = caller.communicate(timeout=60)
    assert json.loads(out.strip().splitlines()[-1]).get("spiffe_id") == cluster.spiffe_id("backend")


def test_host_network_pods_are_refused(cluster: Cluster) -> None:
    pod = cluster.pods.create(cluster.app, "frontend", NODE, host_network=True)
    refused = cluster.fetch(pod, "raw-x509")
    assert refused["code"] == "PERMISSION_DENIED"
    assert "shares the node's network namespace" in str(refused["error"])


def _hold(cluster: Cluster, pod: NodePod) -> tuple[object, float]:
    """A FetchX509SVID stream held open in `pod`; returns it once its first SVID came."""
    process = cluster.pods.spawn(
        pod, fetch_command(cluster.node.socket, "hold", "60"), stdout=-1, text=True
    )
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    assert first["spiffe_id"].endswith(f"/sa/{pod.service_account}"), first
    return process, time.monotonic()


def test_a_deleted_pods_streams_end_and_its_certificate_is_dropped_within_5s(
    cluster: Cluster,
) -> None:
    pod = cluster.pods.create(cluster.app, "lonely", NODE)
    process, _ = _hold(cluster, pod)
    sid = cluster.spiffe_id("lonely")
    assert sid in cluster.node.identities()
    cluster.pods.delete(pod)
    deleted = time.monotonic()
    out, _ = process.communicate(timeout=10)  # type: ignore[attr-defined]
    ended = time.monotonic() - deleted
    last = json.loads(out.strip().splitlines()[-1])
    assert last["ended"] != "OK" or last["serials"], last
    assert ended < 5.0, ended
    cluster.node.wait_until(lambda: sid not in cluster.node.identities(), timeout=5.0 - ended)


def test_a_caller_that_changes_cgroup_after_connecting_is_cut_off(cluster: Cluster) -> None:
    mine = cluster.pods.create(cluster.app, "frontend", NODE)
    theirs = cluster.pods.create(cluster.app, "backend", NODE)
    process, _ = _hold(cluster, mine)
    cluster.pods.move(process.pid, theirs)  # type: ignore[attr-defined]
    out, _ = process.communicate(timeout=10)  # type: ignore[attr-defined]
    *pushed, last = [json.loads(line) for line in out.strip().splitlines()]
    assert last["ended"] in ("UNAVAILABLE", "CANCELLED", "PERMISSION_DENIED"), last
    assert all(p["spiffe_id"] == cluster.spiffe_id("frontend") for p in pushed)  # never backend's
    assert f"connected from {cluster.app}/{mine.name} and is now in container" in cluster.node.log()
