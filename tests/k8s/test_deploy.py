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
from tests.k8s.harness import ControlPlane


@pytest.mark.parametrize("directory", ["base", "overlays/production", "examples/workload"])
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
        ("Namespace", "istio-system"),
        ("ServiceAccount", "bulwark-ca"),
        ("ClusterRole", "bulwark-ca"),
        ("ClusterRoleBinding", "bulwark-ca"),
        ("Role", "bulwark-ca"),
        ("RoleBinding", "bulwark-ca"),
        ("Deployment", "bulwark-ca"),
        ("Service", "istiod"),
        ("PodDisruptionBudget", "bulwark-ca"),
    ]:
        assert wanted in kinds
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["affinity"]["podAntiAffinity"]
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc-tls", 15012),
        ("http-monitoring", 15014),
    }


def test_ca_service_account_is_least_privilege(ca_kubeconfig: Path) -> None:
    """Allowed: review tokens, read namespaces, configmaps anywhere, its own Secret.
    Refused: other Secrets, Secrets outside istio-system, writing namespaces."""
    client = Client(config=KubeConfig.from_file(ca_kubeconfig), trust_env=False)
    review = client.create(TokenReview(spec=TokenReviewSpec(token="not-a-token")))
    assert review.status is not None and not review.status.authenticated
    list(client.list(Namespace))
    list(client.list(ConfigMap, namespace="default"))
    for call in (
        lambda: client.get(Secret, "some-other-secret", namespace="istio-system"),
        lambda: list(client.list(Secret, namespace="istio-system")),
        lambda: client.get(Secret, "istio-ca-secret", namespace="default"),
        lambda: client.delete(Namespace, "default"),
    ):
        with pytest.raises(ApiError) as info:
            call()
        assert info.value.status.code == 403
