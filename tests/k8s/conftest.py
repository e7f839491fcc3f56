"""Fixtures for the tests that run against a real kube-apiserver + etcd (`make test-k8s`).

These tests need binaries built from the Go module registry (tests/k8s/build-peers.sh), so the
default `make test` leaves them out; `make test-k8s` sets BULWARK_K8S_TESTS=1. When selected,
a missing binary or a control plane that does not start fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from tests.support.deploy_tools import tool
from tests.support.kube_harness import ControlPlane, peer_binaries, start_control_plane

if os.environ.get("BULWARK_K8S_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = start_control_plane(peer_binaries(), tmp_path_factory.mktemp("kube"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def admin_client(control_plane: ControlPlane) -> Iterator[Client]:
    client = Client(config=KubeConfig.from_file(control_plane.admin_kubeconfig), trust_env=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def remote_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A second cluster for the multicluster tests, started on first use: the same binaries,
    its own etcd, certificates and service-account key, and kube-controller-manager's token
    controller (which fills the token Secret of `bulwark kube create-remote-secret`)."""
    plane = start_control_plane(
        peer_binaries(),
        tmp_path_factory.mktemp("kube-remote"),
        token_controller=tool("kube-controller-manager"),
    )
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def remote_admin(remote_plane: ControlPlane) -> Iterator[Client]:
    client = Client(config=KubeConfig.from_file(remote_plane.admin_kubeconfig), trust_env=False)
    yield client
    client.close()


@pytest.fixture
def make_namespace(admin_client: Client) -> Callable[[str], str]:
    """Create a namespace with a unique name starting with `prefix`; returns its name."""

    def create(prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin_client.create(Namespace(metadata=ObjectMeta(name=name)))
        return name

    return create


def create_service_account(client: Client, namespace: str, name: str) -> None:
    client.create(ServiceAccount(metadata=ObjectMeta(name=name, namespace=namespace)))


def request_token(
    client: Client,
    namespace: str,
    account: str,
    *,
    audiences: list[str],
    seconds: int = 3600,
    pod: tuple[str, str] | None = None,
) -> str:
    """A token from the TokenRequest API (what the kubelet projects into pods)."""
    bound = (
        BoundObjectReference(kind="Pod", apiVersion="v1", name=pod[0], uid=pod[1])
        if pod is not None
        else None
    )
    spec = TokenRequestSpec(audiences=audiences, expirationSeconds=seconds, boundObjectRef=bound)
    request = ServiceAccount.Token(metadata=ObjectMeta(), spec=spec)
    result = client.create(request, account, namespace=namespace)
    assert result.status is not None
    token = result.status.token
    assert token is not None
    return token


@pytest.fixture(scope="session")
def k8s_bin_dir(control_plane: ControlPlane) -> Path:
    return control_plane.kubectl.parent


REPO = Path(__file__).resolve().parents[2]
CA_NAMESPACE = "istio-system"
CA_SERVICE_ACCOUNT = "bulwark-ca"


def render(control_plane: ControlPlane, directory: str) -> str:
    """`kubectl kustomize deploy/<directory>` with the kubectl built beside the API server."""
    proc = control_plane.kubectl_run("kustomize", str(REPO / "deploy" / directory))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def deployed_base(control_plane: ControlPlane) -> str:
    """deploy/base applied for real: istio-system, the CA's ServiceAccount and its RBAC.
    (No controller-manager runs, so the Deployment makes no pods; the tests run the CA.)"""
    # The Namespace is its own kustomization, so `kubectl delete -k` of base never deletes it.
    namespace = render(control_plane, "namespace")
    proc = control_plane.kubectl_run("apply", "--server-side", "-f", "-", stdin=namespace)
    assert proc.returncode == 0, proc.stderr
    manifests = render(control_plane, "base")
    proc = control_plane.kubectl_run("apply", "--server-side", "-f", "-", stdin=manifests)
    assert proc.returncode == 0, proc.stderr
    return manifests


@pytest.fixture(scope="session")
def ca_kubeconfig(
    control_plane: ControlPlane,
    admin_client: Client,
    deployed_base: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A kubeconfig holding a token of istio-system/bulwark-ca: the CA's own RBAC, not admin."""
    from tests.support.kube_harness import API_AUDIENCE

    token = request_token(
        admin_client, CA_NAMESPACE, CA_SERVICE_ACCOUNT, audiences=[API_AUDIENCE], seconds=7200
    )
    path = tmp_path_factory.mktemp("ca-creds") / "bulwark-ca.kubeconfig"
    return control_plane.write_token_kubeconfig(path, token, namespace=CA_NAMESPACE)
