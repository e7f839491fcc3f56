"""deploy/ rendered by kustomize and accepted by the real API server (server-side dry-run),
and the RBAC it grants is what the CA needs and no more."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.resources.authentication_v1 import TokenReview
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret

from tests.k8s.conftest import render
from tests.support.kube_harness import ControlPlane


@pytest.mark.parametrize(
    "directory",
    [
        "namespace",
        "base",
        "overlays/production",
        "overlays/plugged-ca",
        "overlays/with-istio",
        "examples/workload",
    ],
)
def test_manifests_pass_server_side_dry_run(
    control_plane: ControlPlane, deployed_base: str, directory: str
) -> None:
    manifests = render(control_plane, directory)
    proc = control_plane.kubectl_run(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=manifests,
    )
    assert proc.returncode == 0, proc.stderr
    assert "serverside-applied (server dry run)" in proc.stdout


def test_base_has_what_the_issue_asks_for(deployed_base: str) -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all(deployed_base) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for wanted in [
        ("ServiceAccount", "bulwark-ca"),
        ("ClusterRole", "bulwark-ca-istio-system"),
        ("ClusterRoleBinding", "bulwark-ca-istio-system"),
        ("Role", "bulwark-ca"),
        ("RoleBinding", "bulwark-ca"),
        ("Deployment", "bulwark-ca"),
        ("Service", "istiod"),
        ("PodDisruptionBudget", "bulwark-ca"),
        ("PersistentVolumeClaim", "bulwark-ca-data"),
        ("NetworkPolicy", "bulwark-ca"),
    ]:
        assert wanted in kinds
    # Issue #15: no Namespace in base (`kubectl delete -k` must not delete istio-system) and
    # one replica, because its SQLite record cannot be shared (overlays/production: PostgreSQL).
    assert "Namespace" not in {kind for kind, _ in kinds}
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 1
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc-tls", 15012),
        ("grpc-mtls", 15013),
        ("http-monitoring", 15014),
    }


def test_ca_service_account_is_least_privilege(ca_kubeconfig: Path) -> None:
    """Allowed: review tokens, read namespaces, configmaps anywhere, its own Secret, and list
    and watch the Secrets of istio-system (the remote secrets; docs/MULTICLUSTER.md).
    Refused: getting other Secrets, Secrets outside istio-system, writing namespaces."""
    client = Client(config=KubeConfig.from_file(ca_kubeconfig), trust_env=False)
    review = client.create(TokenReview(spec=TokenReviewSpec(token="not-a-token")))
    assert review.status is not None and not review.status.authenticated
    list(client.list(Namespace))
    list(client.list(ConfigMap, namespace="default"))
    list(client.list(Secret, namespace="istio-system", labels={"istio/multiCluster": "true"}))
    for call in (
        lambda: client.get(Secret, "some-other-secret", namespace="istio-system"),
        lambda: list(client.list(Secret, namespace="default")),
        lambda: client.get(Secret, "istio-ca-secret", namespace="default"),
        lambda: client.delete(Namespace, "default"),
    ):
        with pytest.raises(ApiError) as info:
            call()
        assert info.value.status.code == 403


def test_deployment_container_spec_runs_the_real_ca(
    control_plane: ControlPlane,
    deployed_base: str,
    ca_kubeconfig: Path,
    admin_client: Client,
    tmp_path: Path,
) -> None:
    """The Deployment's own args and env start the CA (the image's entry point is
    `python -m ca_server`); only what a pod gets from Kubernetes is substituted: the
    in-cluster credentials (a kubeconfig of the same ServiceAccount), the downward-API env,
    and loopback ports instead of 0.0.0.0."""
    import yaml

    from certs.csr import build_csr
    from certs.keys import KeyType, generate_key
    from certs.spiffe_id import SpiffeId
    from tests.k8s.conftest import create_service_account, request_token
    from tests.support.ca_client import channel, create_certificate
    from tests.support.ca_process import start_ca

    (deploy,) = [d for d in yaml.safe_load_all(deployed_base) if d and d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    local = ("--data-dir", "--grpc-addr", "--admin-addr", "--mtls-grpc-addr")
    args: list[str] = []
    token_file = tmp_path / "admin-token"
    token_file.write_text("t" * 48)
    token_file.chmod(0o600)
    for arg in container["args"]:
        if arg == "--kube-in-cluster":
            args += ["--kubeconfig", str(ca_kubeconfig)]
        elif arg.startswith("--admin-token-file="):  # the mounted Secret bulwark-admin-token
            args.append(f"--admin-token-file={token_file}")
        elif not arg.startswith(local):
            args.append(arg)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"POD_NAME": "bulwark-ca-7d9f-abcde", "POD_NAMESPACE": "istio-system"}
    env["BULWARK_WORKERS"] = "1"  # two cores shared by the whole test run
    ca = start_ca(tmp_path / "pod", *args, env={**env, "KUBECONFIG": ""})
    try:
        ns = "default"
        try:
            create_service_account(admin_client, ns, "deploy-check")
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        token = request_token(admin_client, ns, "deploy-check", audiences=["istio-ca"])
        me = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/deploy-check")
        with channel(ca.grpc_addr, ca.root_cert_path) as chan:
            chain = create_certificate(
                chan, build_csr(generate_key(KeyType.EC_P256), me), token=token
            )
        assert len(chain) == 2
    finally:
        ca.stop()


def test_with_istio_overlay_renames_the_service_and_the_certificate_names(
    control_plane: ControlPlane,
) -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all(render(control_plane, "overlays/with-istio")) if d]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == ["bulwark-ca"]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "bulwark-ca.istio-system.svc" in env["BULWARK_SERVER_DNS_NAMES"].split(",")
