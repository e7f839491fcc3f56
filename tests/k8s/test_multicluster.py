"""Primary-remote with two real clusters (docs/MULTICLUSTER.md): one CA in cluster A serves the
workloads of cluster B through a remote secret made by `bulwark kube create-remote-secret`.

Cluster A is the session's `control_plane`; the CA runs as istio-system/bulwark-ca with the
RBAC of deploy/base. Cluster B (`remote_plane`) is a second kube-apiserver with its own etcd,
service-account key and token controller. Tests run in file order on one CA; each states
what the previous ones left. The last one stops and restarts B's API server.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret

from certs.csr import build_csr
from certs.keys import KeyType, generate_key
from certs.pem import load_certificates
from certs.spiffe_id import SpiffeId
from certs.verify import verify_svid
from tests.k8s.conftest import CA_NAMESPACE, create_service_account, request_token
from tests.k8s.test_node_auth import make_pod
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import REPO, RunningCa, start_ca, tree_env
from tests.support.kube_harness import ControlPlane
from tests.support.metrics import metric

CLUSTER_A, CLUSTER_B, CLUSTER_C = "cluster-a", "cluster-b", "cluster-c"
SECRET_B = f"istio-remote-secret-{CLUSTER_B}"
NS, SA = "shop", "web"
WEB = SpiffeId.parse(f"spiffe://cluster.local/ns/{NS}/sa/{SA}")
BULWARK = str(REPO / ".venv/bin/bulwark")
ROOT_CM = "istio-ca-root-cert"


def wait_for(cond: Callable[[], bool], seconds: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def ensure_workload(client: Client, namespace: str = NS, account: str = SA) -> None:
    for create in (
        lambda: client.create(Namespace(metadata=ObjectMeta(name=namespace))),
        lambda: create_service_account(client, namespace, account),
    ):
        try:
            create()
        except ApiError as exc:
            if exc.status.code != 409:
                raise


def token_of(client: Client, namespace: str = NS, account: str = SA) -> str:
    return request_token(client, namespace, account, audiences=["istio-ca"])


def issue(
    ca: RunningCa,
    token: str,
    cluster_id: str = "",
    identity: SpiffeId = WEB,
    fields: dict[str, str] | None = None,
) -> list[str]:
    key = generate_key(KeyType.EC_P256)
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        return create_certificate(
            chan,
            build_csr(key, identity),
            token=token,
            cluster_id=cluster_id,
            metadata_fields=fields,
        )


def refusal(ca: RunningCa, token: str, cluster_id: str = "", **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        issue(ca, token, cluster_id, **kw)
    return info.value


def answer(ca: RunningCa, token: str, cluster_id: str) -> grpc.StatusCode:
    try:
        issue(ca, token, cluster_id)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def served(ca: RunningCa, token: str, cluster_id: str) -> bool:
    return answer(ca, token, cluster_id) is grpc.StatusCode.OK


def bulwark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BULWARK, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=tree_env({"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}),
    )


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    proc = plane.kubectl_run(*args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def create_remote_secret(remote: ControlPlane) -> str:
    proc = bulwark(
        "kube", "create-remote-secret", "--kubeconfig", str(remote.admin_kubeconfig),
        "--name", CLUSTER_B, "--wait", "30s",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ca_state(ca: RunningCa) -> dict[str, Any]:
    with urllib.request.urlopen(f"{ca.admin_url}/v1/ca", timeout=5) as resp:
        state: dict[str, Any] = json.load(resp)
    return state


def cluster_row(ca: RunningCa, cluster_id: str) -> dict[str, Any] | None:
    rows = [c for c in ca_state(ca)["clusters"] if c["cluster_id"] == cluster_id]
    return rows[0] if rows else None


def holds_root(client: Client, ns: str, root: str) -> bool:
    try:
        cm = client.get(ConfigMap, ROOT_CM, namespace=ns)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    labels = (cm.metadata.labels if cm.metadata else None) or {}
    return cm.data == {"root-cert.pem": root} and labels.get("istio.io/config") == "true"


@pytest.fixture(scope="module")
def remote(remote_plane: ControlPlane, remote_admin: Client) -> ControlPlane:
    ensure_workload(remote_admin)
    return remote_plane


@pytest.fixture(scope="module")
def mc_ca(
    ca_kubeconfig: Path, admin_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCa]:
    ensure_workload(admin_client)
    ca = start_ca(
        tmp_path_factory.mktemp("multicluster") / "ca",
        "--kubeconfig", str(ca_kubeconfig), "--kube-namespace", CA_NAMESPACE,
        "--cluster-id", CLUSTER_A, "--kube-resync", "2s", "--kube-lease-duration", "4",
        "--trusted-node-accounts", f"{CA_NAMESPACE}/ztunnel", "--workers", "2",
        env={"KUBECONFIG": ""},
    )  # fmt: skip
    try:
        yield ca
    finally:
        ca.stop()
        for secret in admin_client.list(
            Secret, namespace=CA_NAMESPACE, labels={"istio/multiCluster": "true"}
        ):
            assert secret.metadata is not None and secret.metadata.name
            admin_client.delete(Secret, secret.metadata.name, namespace=CA_NAMESPACE)


def test_before_any_remote_secret_cluster_b_is_unknown(
    mc_ca: RunningCa, remote: ControlPlane, remote_admin: Client
) -> None:
    err = refusal(mc_ca, token_of(remote_admin), CLUSTER_B)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown cluster 'cluster-b'" in (err.details() or "")


def test_create_remote_secret_is_applied_and_b_is_served(
    mc_ca: RunningCa, remote: ControlPlane, remote_admin: Client, control_plane: ControlPlane
) -> None:
    text = create_remote_secret(remote)
    assert text.startswith("# This file is autogenerated, do not edit.\n")
    [doc] = [d for d in yaml.safe_load_all(text) if d]
    assert doc["metadata"]["name"] == SECRET_B
    assert doc["metadata"]["labels"] == {"istio/multiCluster": "true"}
    assert doc["metadata"]["annotations"] == {"networking.istio.io/cluster": CLUSTER_B}
    kubeconfig = yaml.safe_load(doc["stringData"][CLUSTER_B])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == remote.url
    kubectl(control_plane, "apply", "-f", "-", stdin=text)

    token = token_of(remote_admin)
    wait_for(lambda: served(mc_ca, token, CLUSTER_B), 15, "cluster B served")
    chain = [load_certificates(pem)[0] for pem in issue(mc_ca, token, CLUSTER_B)]
    roots = load_certificates(mc_ca.root_cert_path.read_bytes())
    assert verify_svid(chain[:-1], roots, now=datetime.now(UTC)) == WEB

    listed = bulwark("certs", "list", "--admin-url", mc_ca.admin_url, "--cluster", CLUSTER_B,
                     "-o", "json")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows and {r["cluster_id"] for r in rows} == {CLUSTER_B}
    assert {r["spiffe_id"] for r in rows} == {str(WEB)}


def test_b_token_named_for_cluster_a_or_for_none_is_refused_by_a(
    mc_ca: RunningCa, remote_admin: Client
) -> None:
    token = token_of(remote_admin)
    for sent in (CLUSTER_A, ""):
        err = refusal(mc_ca, token, sent)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, sent
        assert "TokenReview of cluster 'cluster-a'" in (err.details() or ""), err.details()


def test_a_tokens_work_with_and_without_cluster_id(mc_ca: RunningCa, admin_client: Client) -> None:
    token = token_of(admin_client)
    for sent in (CLUSTER_A, ""):
        assert len(issue(mc_ca, token, sent)) == 2
    err = refusal(mc_ca, token, CLUSTER_B)  # B's API server does not know A's tokens
    assert "TokenReview of cluster 'cluster-b'" in (err.details() or "")


def test_root_configmaps_appear_and_are_repaired_in_both_clusters(
    mc_ca: RunningCa, admin_client: Client, remote_admin: Client
) -> None:
    root = mc_ca.root_cert_path.read_text()
    ns = f"mc-{uuid.uuid4().hex[:6]}"
    for client in (admin_client, remote_admin):
        client.create(Namespace(metadata=ObjectMeta(name=ns)))
    for name, client in (("A", admin_client), ("B", remote_admin)):

        def current(c: Client = client) -> bool:
            return holds_root(c, ns, root)

        wait_for(current, 30, f"root ConfigMap in {name}")
        edited = client.get(ConfigMap, ROOT_CM, namespace=ns)
        edited.data = {"root-cert.pem": "tampered"}
        client.replace(edited)
        wait_for(current, 15, f"edit repaired in {name}")
        client.delete(ConfigMap, ROOT_CM, namespace=ns)
        wait_for(current, 15, f"deletion repaired in {name}")


def test_node_check_runs_in_the_callers_cluster(
    mc_ca: RunningCa, admin_client: Client, remote_admin: Client
) -> None:
    """ztunnel in B may act for `backend` (a pod on its node in B), not for `lonely`, whose
    only pod on that node name is in cluster A."""
    app = f"app-{uuid.uuid4().hex[:6]}"
    ensure_workload(remote_admin, CA_NAMESPACE, "ztunnel")
    for client, account in ((remote_admin, "backend"), (admin_client, "lonely")):
        ensure_workload(client, app, account)
        make_pod(client, app, account, "node-1")
    ztunnel = make_pod(remote_admin, CA_NAMESPACE, "ztunnel", "node-1")
    token = request_token(
        remote_admin, CA_NAMESPACE, "ztunnel", audiences=["istio-ca"], pod=ztunnel
    )
    backend = SpiffeId.parse(f"spiffe://cluster.local/ns/{app}/sa/backend")
    chain = issue(mc_ca, token, CLUSTER_B, backend, {"ImpersonatedIdentity": str(backend)})
    assert (
        verify_svid(
            [load_certificates(p)[0] for p in chain[:-1]],
            load_certificates(mc_ca.root_cert_path.read_bytes()),
            now=datetime.now(UTC),
        )
        == backend
    )
    lonely = SpiffeId.parse(f"spiffe://cluster.local/ns/{app}/sa/lonely")
    err = refusal(mc_ca, token, CLUSTER_B, identity=lonely,
                  fields={"ImpersonatedIdentity": str(lonely)})  # fmt: skip
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no pod on the caller's node" in (err.details() or "")


def test_clusters_view_metrics_and_web_view(mc_ca: RunningCa) -> None:
    wait_for(lambda: (cluster_row(mc_ca, CLUSTER_B) or {}).get("reachable") is True, 10, "B probed")
    own, b = ca_state(mc_ca)["clusters"][:2]
    assert (own["cluster_id"], own["local"], own["reachable"]) == (CLUSTER_A, True, True)
    assert (b["cluster_id"], b["local"], b["source"]) == (
        CLUSTER_B, False, f"secret {CA_NAMESPACE}/{SECRET_B}",
    )  # fmt: skip
    synced = datetime.fromisoformat(b["last_sync"])
    assert (datetime.now(UTC) - synced).total_seconds() < 10
    assert metric(mc_ca, "bulwark_ca_remote_cluster_up", f'cluster="{CLUSTER_B}"') == 1
    assert metric(mc_ca, "bulwark_ca_issued_total", f'cluster="{CLUSTER_B}"') >= 2
    assert metric(mc_ca, "bulwark_ca_refusals_total", f'cluster="{CLUSTER_A}"') >= 2
    assert metric(mc_ca, "bulwark_ca_refusals_total", 'cluster="unknown"') >= 1
    page = urllib.request.urlopen(f"{mc_ca.admin_url}/ui", timeout=5).read().decode()
    assert f'data-cluster="{CLUSTER_B}" data-state="reachable"' in page


def test_a_broken_remote_secret_makes_only_that_cluster_unavailable(
    mc_ca: RunningCa, admin_client: Client, remote_admin: Client
) -> None:
    admin_client.create(
        Secret(
            metadata=ObjectMeta(
                name=f"istio-remote-secret-{CLUSTER_C}",
                namespace=CA_NAMESPACE,
                labels={"istio/multiCluster": "true"},
                annotations={"networking.istio.io/cluster": CLUSTER_C},
            ),
            stringData={CLUSTER_C: "apiVersion: v1\nkind: Config\nclusters: [oops\n"},
        )
    )
    wait_for(lambda: cluster_row(mc_ca, CLUSTER_C) is not None, 10, "cluster C listed")
    row = cluster_row(mc_ca, CLUSTER_C)
    assert row is not None and row["reachable"] is False and "not YAML" in row["error"]
    token = token_of(remote_admin)
    unavailable = grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: answer(mc_ca, token, CLUSTER_C) == unavailable, 5, "the workers know C")
    err = refusal(mc_ca, token, CLUSTER_C)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "cluster 'cluster-c' is unavailable" in (err.details() or "")
    assert served(mc_ca, token_of(remote_admin), CLUSTER_B)
    assert metric(mc_ca, "bulwark_ca_remote_cluster_up", f'cluster="{CLUSTER_C}"') == 0
    lines = [ln for ln in mc_ca.log().splitlines() if "remote cluster 'cluster-c'" in ln]
    assert len(lines) == 1 and "unavailable: kubeconfig is not YAML" in lines[0], lines
    admin_client.delete(Secret, f"istio-remote-secret-{CLUSTER_C}", namespace=CA_NAMESPACE)
    wait_for(lambda: cluster_row(mc_ca, CLUSTER_C) is None, 10, "cluster C gone")


def istioctl_shaped_secret(remote: ControlPlane, remote_admin: Client) -> str:
    """A remote secret written by hand exactly as `istioctl create-remote-secret` documents it:
    istio-reader-service-account's bearer token in a kubeconfig named after the cluster."""
    reader = "istio-reader-service-account"
    ensure_workload(remote_admin, CA_NAMESPACE, reader)
    kubectl(remote, "create", "clusterrolebinding", f"{reader}-by-hand",
            "--clusterrole", f"bulwark-ca-remote-{CA_NAMESPACE}",
            f"--serviceaccount={CA_NAMESPACE}:{reader}")  # fmt: skip
    token = request_token(remote_admin, CA_NAMESPACE, reader, audiences=[], seconds=7200)
    ca_data = base64.b64encode(remote.ca_file.read_bytes()).decode()
    return f"""# This file is autogenerated, do not edit.
apiVersion: v1
kind: Secret
metadata:
  annotations:
    networking.istio.io/cluster: {CLUSTER_B}
  creationTimestamp: null
  labels:
    istio/multiCluster: "true"
  name: {SECRET_B}
  namespace: {CA_NAMESPACE}
stringData:
  {CLUSTER_B}: |
    apiVersion: v1
    clusters:
    - cluster:
        certificate-authority-data: {ca_data}
        server: {remote.url}
      name: {CLUSTER_B}
    contexts:
    - context:
        cluster: {CLUSTER_B}
        user: {CLUSTER_B}
      name: {CLUSTER_B}
    current-context: {CLUSTER_B}
    kind: Config
    preferences: {{}}
    users:
    - name: {CLUSTER_B}
      user:
        token: {token}
---
"""


def test_an_istioctl_shaped_secret_replaces_revoked_credentials(
    mc_ca: RunningCa, control_plane: ControlPlane, remote: ControlPlane, remote_admin: Client
) -> None:
    """Revoking the token of bulwark's secret makes B unavailable (B's API server refuses the
    CA); applying istioctl's shape under the same name brings B back with new credentials."""
    remote_admin.delete(Secret, "bulwark-ca-remote-token", namespace=CA_NAMESPACE)
    unavailable = grpc.StatusCode.UNAVAILABLE
    wait_for(  # each try a fresh token: never in a review cache
        lambda: answer(mc_ca, token_of(remote_admin), CLUSTER_B) == unavailable,
        15,
        "the revoked token refused by B",
    )
    err = refusal(mc_ca, token_of(remote_admin), CLUSTER_B)
    assert re.search(r"cluster 'cluster-b'.*401", err.details() or ""), err.details()

    kubectl(control_plane, "apply", "-f", "-", stdin=istioctl_shaped_secret(remote, remote_admin))
    token = token_of(remote_admin)
    wait_for(lambda: served(mc_ca, token, CLUSTER_B), 15, "B served with istioctl's secret")


def test_deleting_the_remote_secret_refuses_b_callers_within_5_s(
    mc_ca: RunningCa, admin_client: Client, remote_admin: Client
) -> None:
    token = token_of(remote_admin)
    assert served(mc_ca, token, CLUSTER_B)  # now in B's review cache too
    admin_client.delete(Secret, SECRET_B, namespace=CA_NAMESPACE)
    took = wait_for(lambda: not served(mc_ca, token, CLUSTER_B), 5, "B refused")
    err = refusal(mc_ca, token, CLUSTER_B)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown cluster" in (
        err.details() or ""
    )
    assert took < 5


def test_stopping_b_api_server_is_unavailable_for_b_only(
    mc_ca: RunningCa, control_plane: ControlPlane, remote: ControlPlane,
    admin_client: Client, remote_admin: Client,
) -> None:  # fmt: skip
    kubectl(control_plane, "apply", "-f", "-", stdin=create_remote_secret(remote))
    wait_for(lambda: served(mc_ca, token_of(remote_admin), CLUSTER_B), 15, "B served again")
    fresh_b = token_of(remote_admin)  # never reviewed: needs B's API server
    remote.stop_apiserver()
    try:
        err = refusal(mc_ca, fresh_b, CLUSTER_B)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert "cluster 'cluster-b'" in (err.details() or "")
        assert len(issue(mc_ca, token_of(admin_client), CLUSTER_A)) == 2
        wait_for(
            lambda: (cluster_row(mc_ca, CLUSTER_B) or {}).get("reachable") is False,
            10,
            "B seen unreachable",
        )
        assert metric(mc_ca, "bulwark_ca_remote_cluster_up", f'cluster="{CLUSTER_B}"') == 0
    finally:
        remote.restart_apiserver()
    wait_for(lambda: served(mc_ca, fresh_b, CLUSTER_B), 20, "B served after its restart")


def test_a_ca_that_may_not_read_secrets_serves_its_own_cluster_and_says_why(
    control_plane: ControlPlane, admin_client: Client, deployed_base: str, tmp_path: Path
) -> None:
    """RBAC without list/watch on Secrets (an upgrade that kept the old role): the remote
    secrets cannot be read; the CA still serves its own cluster and says why, once.
    (deploy/base's ClusterRole, without its namespaced Role.)"""
    account = "ca-without-secrets"
    ensure_workload(admin_client, CA_NAMESPACE, account)
    ensure_workload(admin_client)
    rbac = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {account}, namespace: {CA_NAMESPACE}}}
rules:
- {{apiGroups: [""], resources: [secrets], verbs: [create]}}
- {{apiGroups: [""], resources: [secrets], resourceNames: [istio-ca-secret], verbs: [get, update]}}
- {{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {account}, namespace: {CA_NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {account}}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {CA_NAMESPACE}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {account}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bulwark-ca-istio-system}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {CA_NAMESPACE}}}]
"""
    kubectl(control_plane, "apply", "-f", "-", stdin=rbac)
    token = request_token(admin_client, CA_NAMESPACE, account, audiences=[], seconds=3600)
    kubeconfig = control_plane.write_token_kubeconfig(
        tmp_path / "ca.kubeconfig", token, namespace=CA_NAMESPACE
    )
    ca = start_ca(
        tmp_path / "ca", "--kubeconfig", str(kubeconfig), "--kube-namespace", CA_NAMESPACE,
        "--cluster-id", CLUSTER_A, "--workers", "1", env={"KUBECONFIG": ""},
    )  # fmt: skip
    try:
        assert len(issue(ca, token_of(admin_client), CLUSTER_A)) == 2
        own = cluster_row(ca, CLUSTER_A)
        assert own is not None and "cannot read remote secrets" in own["error"]
        assert "403" in own["error"]
    finally:
        ca.stop()
    lines = [ln for ln in ca.log().splitlines() if "cannot read remote secrets" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], lines
