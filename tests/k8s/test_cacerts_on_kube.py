"""A plugged-in `cacerts` directory (the mounted `cacerts` Secret) keeps working with
Kubernetes on: no istio-ca-secret is created, the plugged-in root is what the ConfigMaps carry,
and TokenReview-authenticated callers get [leaf, intermediate, root]."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import ConfigMap, Secret

from certs.csr import build_csr
from certs.keys import KeyType, generate_key
from certs.spiffe_id import SpiffeId
from tests.k8s.conftest import create_service_account, request_token
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa, start_ca
from tests.support.kube_harness import ControlPlane
from tests.support.openssl import make_cacerts


@pytest.fixture
def plugged_ca(
    control_plane: ControlPlane, make_namespace: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[RunningCa, str, Path]]:
    ns = make_namespace("plug")
    cacerts = make_cacerts(tmp_path / "cacerts")
    ca = start_ca(
        tmp_path / "ca",
        "--kubeconfig",
        str(control_plane.admin_kubeconfig),
        "--kube-namespace",
        ns,
        "--kube-identity",
        "plugged-0",
        "--kube-lease-duration",
        "4",
        "--cacerts-dir",
        str(cacerts),
        env={"KUBECONFIG": ""},
    )
    try:
        yield ca, ns, cacerts
    finally:
        ca.stop()


def test_plugged_in_root_is_published_and_used(
    plugged_ca: tuple[RunningCa, str, Path],
    admin_client: Client,
    make_namespace: Callable[[str], str],
) -> None:
    ca, ns, cacerts = plugged_ca
    with pytest.raises(ApiError) as info:
        admin_client.get(Secret, "istio-ca-secret", namespace=ns)
    assert info.value.status.code == 404
    root = (cacerts / "root-cert.pem").read_text()

    workload_ns = make_namespace("plugwl")
    deadline = time.monotonic() + 5
    while True:
        try:
            cm = admin_client.get(ConfigMap, "istio-ca-root-cert", namespace=workload_ns)
            if cm.data and cm.data.get("root-cert.pem", "").strip() == root.strip():
                break
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        assert time.monotonic() < deadline, "plugged-in root not published within 5 s"
        time.sleep(0.1)

    create_service_account(admin_client, workload_ns, "api")
    token = request_token(admin_client, workload_ns, "api", audiences=["istio-ca"])
    me = SpiffeId.parse(f"spiffe://cluster.local/ns/{workload_ns}/sa/api")
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        chain = create_certificate(chan, build_csr(generate_key(KeyType.EC_P256), me), token=token)
    assert len(chain) == 3
    assert chain[-1].strip() == root.strip()
