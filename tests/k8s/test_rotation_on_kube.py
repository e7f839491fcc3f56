"""Self-signed root renewal with Kubernetes on: only the Lease holder renews; the renewed root
is stored in istio-ca-secret, followers pick it up, and every ConfigMap carries old + new."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import ConfigMap, Secret

from ca_server.authority.material import CaMaterial, load_or_create
from ca_server.kube import SecretKeyStore
from certs.pem import load_certificates
from certs.spiffe_id import TrustDomain
from tests.support.ca_process import RunningCa, start_ca
from tests.support.kube_harness import ControlPlane

TD = TrustDomain("cluster.local")


@pytest.fixture
def aging_pair(
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[tuple[str, CaMaterial, dict[str, RunningCa]]]:
    ns = make_namespace("rotate")
    store = SecretKeyStore(admin_client, namespace=ns)
    aging = load_or_create(store, TD, datetime.now(UTC) - timedelta(days=3300))
    started: dict[str, RunningCa] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = start_ca(
                tmp_path / name,
                "--kubeconfig",
                str(control_plane.admin_kubeconfig),
                "--kube-namespace",
                ns,
                "--kube-identity",
                name,
                "--kube-lease-duration",
                "4",
                "--material-check-interval",
                "0.3s",
                env={"KUBECONFIG": ""},
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("r-0", "r-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        yield ns, aging, started
    finally:
        for ca in started.values():
            ca.stop()


def test_only_the_leader_renews_and_everyone_converges(
    aging_pair: tuple[str, CaMaterial, dict[str, RunningCa]],
    admin_client: Client,
    make_namespace: Callable[[str], str],
) -> None:
    ns, aging, replicas = aging_pair

    def stored_roots() -> list[x509.Certificate]:
        secret = admin_client.get(Secret, "istio-ca-secret", namespace=ns)
        return load_certificates(base64.b64decode((secret.data or {})["root-cert.pem"]))

    deadline = time.monotonic() + 30
    while len(stored_roots()) < 2:
        assert time.monotonic() < deadline, "root not renewed in the Secret"
        time.sleep(0.2)
    secret = admin_client.get(Secret, "istio-ca-secret", namespace=ns)
    bundle = base64.b64decode((secret.data or {})["root-cert.pem"])
    new_root, old_root = load_certificates(bundle)
    assert old_root == aging.signing_cert
    assert new_root.public_key() == old_root.public_key()

    deadline = time.monotonic() + 30
    while not all(ca.root_cert_path.read_bytes() == bundle for ca in replicas.values()):
        assert time.monotonic() < deadline, "replicas did not converge on the renewed bundle"
        time.sleep(0.2)
    renewers = [n for n, ca in replicas.items() if "self-signed root renewed" in ca.log()]
    assert len(renewers) == 1, renewers
    # Let both finish handing the new material to their workers before they are stopped.
    deadline = time.monotonic() + 60
    while not all(
        "1 CA worker(s) now sign with the new CA material" in ca.log() for ca in replicas.values()
    ):
        assert time.monotonic() < deadline, "workers not updated after the renewal"
        time.sleep(0.2)

    workload_ns = make_namespace("rotwl")
    deadline = time.monotonic() + 5
    while True:
        try:
            cm = admin_client.get(ConfigMap, "istio-ca-root-cert", namespace=workload_ns)
            if (cm.data or {}).get("root-cert.pem", "").encode() == bundle:
                break
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        assert time.monotonic() < deadline, "ConfigMap does not carry the renewed bundle"
        time.sleep(0.1)
