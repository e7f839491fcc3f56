"""Istio's own client in a primary-remote mesh: istio-agent's code sends the ClusterID header
(ISTIO_META_CLUSTER_ID) and Bulwark reviews the token with that cluster's API server.

Two real clusters (kube-apiserver + etcd each, tests/support/kube_harness.py): the CA runs in
"cluster-a" with --kubeconfig; "cluster-b" is known to it only through a remote secret written
by hand in `istioctl create-remote-secret`'s documented shape, holding a TokenRequest token of
an account with the RBAC the CA needs there.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.core_v1 import Namespace, Secret
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

from ca_server.kube.remote_access import REMOTE_RULES
from tests.k8s.conftest import create_service_account, request_token
from tests.support.ca_process import RunningCa, start_ca
from tests.support.interop import (
    IstioBinaries,
    openssl_verify,
    run_istio_csr,
    spiffe_ids,
    write_token,
)
from tests.support.kube_harness import ControlPlane, peer_binaries, start_control_plane

NS, SA = "shop", "checkout"
CHECKOUT = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"
A, B = "cluster-a", "cluster-b"


def admin_of(plane: ControlPlane) -> Client:
    client = Client(config=KubeConfig.from_file(plane.admin_kubeconfig), trust_env=False)
    for name in ("istio-system", NS):
        try:
            client.create(Namespace(metadata=ObjectMeta(name=name)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    create_service_account(client, NS, SA)
    return client


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ControlPlane]]:
    started: dict[str, ControlPlane] = {}
    try:
        for name in (A, B):
            started[name] = start_control_plane(peer_binaries(), tmp_path_factory.mktemp(name))
        yield started
    finally:
        for plane in started.values():
            plane.stop()


@pytest.fixture(scope="module")
def admins(planes: dict[str, ControlPlane]) -> Iterator[dict[str, Client]]:
    clients = {name: admin_of(plane) for name, plane in planes.items()}
    yield clients
    for client in clients.values():
        client.close()


def istioctl_secret(remote: ControlPlane, admin: Client) -> Secret:
    """The remote secret for cluster B, in istioctl's shape, with a reader account's token."""
    reader = "istio-reader-service-account"
    create_service_account(admin, "istio-system", reader)
    admin.create(ClusterRole(metadata=ObjectMeta(name="reader"), rules=list(REMOTE_RULES)))
    admin.create(
        ClusterRoleBinding(
            metadata=ObjectMeta(name="reader"),
            roleRef=RoleRef(
                apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name="reader"
            ),
            subjects=[Subject(kind="ServiceAccount", name=reader, namespace="istio-system")],
        )
    )
    token = request_token(admin, "istio-system", reader, audiences=[], seconds=7200)
    ca_data = base64.b64encode(remote.ca_file.read_bytes()).decode()
    kubeconfig = (
        f"apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n"
        f"    server: {remote.url}\n  name: {B}\ncontexts:\n- context:\n    cluster: {B}\n"
        f"    user: {B}\n  name: {B}\ncurrent-context: {B}\nkind: Config\npreferences: {{}}\n"
        f"users:\n- name: {B}\n  user:\n    token: {token}\n"
    )
    return Secret(
        metadata=ObjectMeta(
            name=f"istio-remote-secret-{B}",
            namespace="istio-system",
            annotations={"networking.istio.io/cluster": B},
            labels={"istio/multiCluster": "true"},
        ),
        stringData={B: kubeconfig},
    )


@pytest.fixture(scope="module")
def primary_ca(
    planes: dict[str, ControlPlane],
    admins: dict[str, Client],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningCa]:
    ca = start_ca(
        tmp_path_factory.mktemp("primary") / "ca",
        "--kubeconfig", str(planes[A].admin_kubeconfig), "--cluster-id", A,
        "--csr-san-policy", "strict",
        env={"POD_NAMESPACE": "istio-system"},
    )  # fmt: skip
    try:
        admins[A].create(istioctl_secret(planes[B], admins[B]))
        yield ca
    finally:
        ca.stop()


def csr(
    istio: IstioBinaries, ca: RunningCa, token_file: Path, cluster_id: str
) -> tuple[bool, str, list[str], str | None]:
    result = run_istio_csr(
        istio,
        ca_addr=ca.grpc_addr,
        root_cert=ca.root_cert_path,
        token_file=token_file,
        namespace=NS,
        service_account=SA,
        cluster_id=cluster_id,
    )
    return result.ok, result.error, result.chain, result.grpc_code


def test_istio_client_in_cluster_b_is_served_through_b(
    istio: IstioBinaries, admins: dict[str, Client], primary_ca: RunningCa, tmp_path: Path
) -> None:
    token = write_token(
        tmp_path / "istio-token", request_token(admins[B], NS, SA, audiences=["istio-ca"])
    )
    deadline = time.monotonic() + 20
    ok, error, chain, _ = csr(istio, primary_ca, token, B)
    while not ok and time.monotonic() < deadline:  # the CA's watch takes the secret in
        time.sleep(0.5)
        ok, error, chain, _ = csr(istio, primary_ca, token, B)
    assert ok, f"{error}\n{primary_ca.log()[-3000:]}"
    assert spiffe_ids(chain[0]) == [CHECKOUT]
    openssl_verify("".join(chain), primary_ca.root_cert_path, tmp_path / "verify")


def test_a_token_of_b_sent_as_cluster_a_is_refused_by_a(
    istio: IstioBinaries, admins: dict[str, Client], primary_ca: RunningCa, tmp_path: Path
) -> None:
    token = write_token(
        tmp_path / "istio-token", request_token(admins[B], NS, SA, audiences=["istio-ca"])
    )
    ok, error, _, code = csr(istio, primary_ca, token, A)
    assert not ok and code == "Unauthenticated", error
    assert "TokenReview of cluster 'cluster-a'" in error


def test_istio_client_in_cluster_a_is_served_through_a(
    istio: IstioBinaries, admins: dict[str, Client], primary_ca: RunningCa, tmp_path: Path
) -> None:
    token = write_token(
        tmp_path / "istio-token", request_token(admins[A], NS, SA, audiences=["istio-ca"])
    )
    ok, error, chain, _ = csr(istio, primary_ca, token, A)
    assert ok, error
    assert spiffe_ids(chain[0]) == [CHECKOUT]
    ok, error, _, code = csr(istio, primary_ca, token, "Kubernetes")  # istio-agent's default
    assert not ok and code == "Unauthenticated" and "unknown cluster 'Kubernetes'" in error
