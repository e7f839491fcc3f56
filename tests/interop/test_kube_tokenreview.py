"""Istio's client and pilot-agent with Kubernetes tokens: Bulwark authenticates by TokenReview.

A real etcd + kube-apiserver (tests/support/kube_harness.py, binaries from tests/k8s/build-peers.sh)
issues service-account tokens through the TokenRequest API, as the kubelet projects them
into pods; Bulwark runs with --kubeconfig, so it reviews every token with the API server,
keeps its root in the istio-ca-secret Secret and publishes the istio-ca-root-cert ConfigMap,
which is the root pilot-agent is given here, as in a pod.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod

from tests.k8s.conftest import create_service_account, request_token
from tests.support.ca_process import RunningCa, start_ca
from tests.support.interop import (
    IstioBinaries,
    metric,
    openssl_verify,
    run_istio_csr,
    spiffe_ids,
    write_token,
)
from tests.support.kube_harness import ControlPlane, peer_binaries, start_control_plane
from tests.support.pilot_agent import Workload, pod_root, start_pilot_agent

NS, SA = "shop", "checkout"
CHECKOUT = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = start_control_plane(peer_binaries(), tmp_path_factory.mktemp("kube"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def admin_client(control_plane: ControlPlane) -> Iterator[Client]:
    client = Client(config=KubeConfig.from_file(control_plane.admin_kubeconfig), trust_env=False)
    for name in ("istio-system", NS):
        try:
            client.create(Namespace(metadata=ObjectMeta(name=name)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    create_service_account(client, NS, SA)
    yield client
    client.close()


@pytest.fixture(scope="module")
def kube_ca(
    control_plane: ControlPlane, admin_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCa]:
    ca = start_ca(
        tmp_path_factory.mktemp("kubeca") / "ca",
        "--kubeconfig",
        str(control_plane.admin_kubeconfig),
        "--csr-san-policy",
        "strict",
        env={"POD_NAMESPACE": "istio-system"},
    )
    try:
        yield ca
    finally:
        ca.stop()


def token_payload(token: str) -> dict[str, object]:
    body = token.split(".")[1]
    payload: dict[str, object] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return payload


def published_root(client: Client, namespace: str, timeout: float = 30.0) -> str:
    """The istio-ca-root-cert ConfigMap Bulwark publishes (what pods mount), once present."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cm = client.get(ConfigMap, "istio-ca-root-cert", namespace=namespace)
            pem = (cm.data or {}).get("root-cert.pem")
            if pem:
                return str(pem)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        assert time.monotonic() < deadline, f"no istio-ca-root-cert in {namespace} in {timeout}s"
        time.sleep(0.2)


def test_tokenrequest_token_gets_chain_through_tokenreview(
    istio: IstioBinaries, admin_client: Client, kube_ca: RunningCa, tmp_path: Path
) -> None:
    token = request_token(admin_client, NS, SA, audiences=["istio-ca"])
    payload = token_payload(token)
    assert payload["sub"] == f"system:serviceaccount:{NS}:{SA}"
    assert payload["iss"] == "https://kubernetes.default.svc.cluster.local"
    token_file = write_token(tmp_path / "istio-token", token)
    before = metric(kube_ca.admin_url, "citadel_server_success_cert_issuance_count")

    result = run_istio_csr(
        istio,
        ca_addr=kube_ca.grpc_addr,
        root_cert=kube_ca.root_cert_path,
        token_file=token_file,
        namespace=NS,
        service_account=SA,
    )

    assert result.ok, f"{result.error}\n{result.log}\n{kube_ca.log()[-3000:]}"
    assert spiffe_ids(result.chain[0]) == [CHECKOUT]
    openssl_verify("".join(result.chain), kube_ca.root_cert_path, tmp_path / "verify")
    assert metric(kube_ca.admin_url, "citadel_server_success_cert_issuance_count") == before + 1


def test_tokenreview_refuses_other_audience_and_strict_refuses_other_identity(
    istio: IstioBinaries, admin_client: Client, kube_ca: RunningCa, tmp_path: Path
) -> None:
    wrong_audience = write_token(
        tmp_path / "aud-token", request_token(admin_client, NS, SA, audiences=["not-istio-ca"])
    )
    result = run_istio_csr(
        istio,
        ca_addr=kube_ca.grpc_addr,
        root_cert=kube_ca.root_cert_path,
        token_file=wrong_audience,
        namespace=NS,
        service_account=SA,
    )
    assert result.grpc_code == "Unauthenticated", result.error

    good = write_token(
        tmp_path / "istio-token", request_token(admin_client, NS, SA, audiences=["istio-ca"])
    )
    before = metric(kube_ca.admin_url, "citadel_server_csr_count")
    result = run_istio_csr(
        istio,
        ca_addr=kube_ca.grpc_addr,
        root_cert=kube_ca.root_cert_path,
        token_file=good,
        namespace="istio-system",
        service_account="istiod",
    )
    assert result.grpc_code == "PermissionDenied", result.error
    assert metric(kube_ca.admin_url, "citadel_server_csr_count") == before + 1


def test_pilot_agent_with_projected_token_and_root_configmap(
    istio: IstioBinaries, admin_client: Client, kube_ca: RunningCa
) -> None:
    root_pem = published_root(admin_client, NS)
    assert x509.load_pem_x509_certificates(root_pem.encode()) == x509.load_pem_x509_certificates(
        kube_ca.root_cert_path.read_bytes()
    )
    # What the kubelet projects: a token bound to the pod, audience istio-ca.
    pod = admin_client.create(
        Pod(
            metadata=ObjectMeta(name="checkout-0", namespace=NS),
            spec=PodSpec(serviceAccountName=SA, containers=[Container(name="app", image="app")]),
        )
    )
    assert pod.metadata is not None and pod.metadata.uid is not None
    token = request_token(
        admin_client, NS, SA, audiences=["istio-ca"], pod=("checkout-0", pod.metadata.uid)
    )
    claims = token_payload(token)["kubernetes.io"]
    assert isinstance(claims, dict) and claims["pod"]["name"] == "checkout-0", claims
    for root in pod_root():
        mounted_root = root / "configmap-root-cert.pem"
        mounted_root.write_text(root_pem)
        agent = start_pilot_agent(
            istio,
            root,
            ca_addr=kube_ca.grpc_addr,
            root_cert=mounted_root,
            workload=Workload(NS, SA, "checkout-0", token),
        )
        try:
            agent.wait_for_output_certs()
            chain = (agent.output_certs / "cert-chain.pem").read_text()
            assert spiffe_ids(chain) == [CHECKOUT]
            openssl_verify(chain, mounted_root, root / "verify")
        finally:
            code = agent.stop()
        assert code == 0, agent.log()


def test_cluster_id_header_must_name_this_cluster(
    istio: IstioBinaries, admin_client: Client, kube_ca: RunningCa, tmp_path: Path
) -> None:
    """Istio's client sends ISTIO_META_CLUSTER_ID as the ClusterID header; an unknown one fails."""
    token_file = write_token(
        tmp_path / "istio-token", request_token(admin_client, NS, SA, audiences=["istio-ca"])
    )

    result = run_istio_csr(
        istio,
        ca_addr=kube_ca.grpc_addr,
        root_cert=kube_ca.root_cert_path,
        token_file=token_file,
        namespace=NS,
        service_account=SA,
        cluster_id="remote-cluster",
    )

    assert result.grpc_code == "Unauthenticated", result.error
    assert "remote-cluster" in result.error


def test_unreachable_api_server_is_unavailable_and_istio_retries_it(
    istio: IstioBinaries,
    control_plane: ControlPlane,
    admin_client: Client,
    kube_ca: RunningCa,
    tmp_path: Path,
) -> None:
    """The contrast to PERMISSION_DENIED: a retryable code is retried (WithMax(5) attempts).

    Stops the module's kube-apiserver, so it stays the last test of this module.
    """
    token_file = write_token(
        tmp_path / "istio-token", request_token(admin_client, NS, SA, audiences=["istio-ca"])
    )
    next(proc for proc in control_plane.procs if proc.name == "kube-apiserver").stop()
    before = metric(kube_ca.admin_url, "citadel_server_csr_count")

    result = run_istio_csr(
        istio,
        ca_addr=kube_ca.grpc_addr,
        root_cert=kube_ca.root_cert_path,
        token_file=token_file,
        namespace=NS,
        service_account=SA,
    )

    assert result.grpc_code == "Unavailable", result.error
    assert "TokenReview" in result.error
    assert metric(kube_ca.admin_url, "citadel_server_csr_count") == before + 5
    assert result.log.count("ca request failed, starting attempt") == 4, result.log
