"""SecretKeyStore against a real API server: Istio's layout (docs/COMPATIBILITY.md §1), create-only-if-absent, racing replicas."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from ca_server.authority.material import CaMaterial, create_self_signed, load_or_create
from ca_server.kube import KubeMaterialError, SecretKeyStore
from certs.pem import sha256_fingerprint
from certs.spiffe_id import TrustDomain

TD = TrustDomain("cluster.local")


def test_absent_secret_loads_as_none(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    assert SecretKeyStore(admin_client, namespace=make_namespace("ss")).load() is None


def test_saved_material_has_the_istio_layout_and_loads_back(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("ss")
    store = SecretKeyStore(admin_client, namespace=ns)
    made = load_or_create(store, TD, datetime.now(UTC))
    secret = admin_client.get(Secret, "istio-ca-secret", namespace=ns)
    assert secret.type == "istio.io/ca-root"
    data = secret.data or {}
    assert set(data) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem", "key.pem"}
    assert data["cert-chain.pem"] == "" and data["key.pem"] == ""
    assert base64.b64decode(data["ca-cert.pem"]).startswith(b"-----BEGIN CERTIFICATE-----")
    loaded = store.load()
    assert loaded is not None
    assert sha256_fingerprint(loaded.signing_cert) == sha256_fingerprint(made.signing_cert)
    assert loaded.roots == (made.signing_cert,) and loaded.chain == ()


def test_existing_secret_is_never_overwritten(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("ss")
    store = SecretKeyStore(admin_client, namespace=ns)
    first = store.save(create_self_signed(TD, datetime.now(UTC)))
    second = store.save(create_self_signed(TD, datetime.now(UTC)))
    assert sha256_fingerprint(second.signing_cert) == sha256_fingerprint(first.signing_cert)


def test_replicas_racing_end_up_on_one_root(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("race")
    barrier = threading.Barrier(6)
    results: list[CaMaterial] = []
    lock = threading.Lock()

    def replica() -> None:
        store = SecretKeyStore(admin_client, namespace=ns)
        candidate = create_self_signed(TD, datetime.now(UTC))
        barrier.wait()
        got = store.save(candidate)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6
    assert len({sha256_fingerprint(m.signing_cert) for m in results}) == 1
    stored = SecretKeyStore(admin_client, namespace=ns).load()
    assert stored is not None
    assert sha256_fingerprint(stored.signing_cert) == sha256_fingerprint(results[0].signing_cert)


def test_malformed_secret_is_an_error_not_a_new_root(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("bad")
    admin_client.create(
        Secret(
            metadata=ObjectMeta(name="istio-ca-secret", namespace=ns),
            type="istio.io/ca-root",
            data={"ca-cert.pem": base64.b64encode(b"not a cert").decode()},
        )
    )
    with pytest.raises(KubeMaterialError) as info:
        SecretKeyStore(admin_client, namespace=ns).load()
    assert "ca-key.pem" in str(info.value)


def test_renewed_root_replaces_the_stored_one_and_keeps_the_old_in_the_bundle(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    from ca_server.authority.refresh import RenewableKeyStore, renewed_root

    ns = make_namespace("rot")
    store = SecretKeyStore(admin_client, namespace=ns)
    assert isinstance(store, RenewableKeyStore)
    first = load_or_create(store, TD, datetime.now(UTC))
    renewed = renewed_root(first, TD, datetime.now(UTC))
    store.replace(renewed)
    loaded = store.load()
    assert loaded is not None
    assert sha256_fingerprint(loaded.signing_cert) == sha256_fingerprint(renewed.signing_cert)
    assert {sha256_fingerprint(r) for r in loaded.roots} == {
        sha256_fingerprint(renewed.signing_cert),
        sha256_fingerprint(first.signing_cert),
    }
    secret = admin_client.get(Secret, "istio-ca-secret", namespace=ns)
    assert secret.type == "istio.io/ca-root"
    assert (secret.data or {})["cert-chain.pem"] == ""
