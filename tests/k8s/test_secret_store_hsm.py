"""`istio-ca-secret` with the CA key in an HSM (a real SoftHSM2 token), against a real API
server: the Secret holds certificates and the key's URI, never a key, and loads back into a
CA that signs in the token; the CA slots of new-key rotation likewise."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Secret

from ca_server.authority.custody import HsmCustody
from ca_server.authority.material import create_self_signed, load_or_create
from ca_server.authority.slots.model import Authority, Slot, SlotState
from ca_server.hsm.generate import generate_keypair
from ca_server.hsm.keys import HsmEcKey
from ca_server.hsm.pin import Pin
from ca_server.hsm.token import HsmToken
from ca_server.hsm.uri import parse
from ca_server.kube import SecretKeyStore
from certs.keys import KeyType
from certs.spiffe_id import TrustDomain
from tests.support.softhsm import MODULE, USER_PIN, make_softhsm

TD = TrustDomain("cluster.local")


@pytest.fixture
def custody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HsmCustody]:
    hsm = make_softhsm(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    token = HsmToken(module=MODULE, token_label=hsm.label, pin=Pin(USER_PIN, "test"))
    token.open()
    info = generate_keypair(token, parse("pkcs11:token=bulwark;object=root"), KeyType.EC_P256)
    try:
        yield HsmCustody(token, info.uri)
    finally:
        token.close()


def _no_key(data: dict[str, str]) -> None:
    for name, value in data.items():
        assert b"PRIVATE KEY" not in base64.b64decode(value), name


def test_secret_holds_certificates_and_the_uri_only(
    admin_client: Client, make_namespace: Callable[[str], str], custody: HsmCustody
) -> None:
    ns = make_namespace("hsm")
    store = SecretKeyStore(admin_client, namespace=ns, custody=custody)
    made = load_or_create(store, TD, datetime.now(UTC), custody)
    data = admin_client.get(Secret, "istio-ca-secret", namespace=ns).data or {}
    assert data["ca-key.pem"] == "" and data["key.pem"] == ""
    assert base64.b64decode(data["ca-key.uri"]).decode().startswith("pkcs11:token=bulwark;")
    _no_key(data)
    loaded = SecretKeyStore(admin_client, namespace=ns, custody=custody).load()
    assert loaded is not None and loaded.signing_cert == made.signing_cert
    assert isinstance(loaded.signing_key, HsmEcKey)


def test_slots_in_the_secret_name_hsm_keys(
    admin_client: Client, make_namespace: Callable[[str], str], custody: HsmCustody
) -> None:
    ns = make_namespace("hsm-slots")
    store = SecretKeyStore(admin_client, namespace=ns, custody=custody)
    now = datetime.now(UTC)
    load_or_create(store, TD, now, custody)
    active = Authority.of(create_self_signed(TD, now, custody.initial_key()))
    prepared = Authority.of(create_self_signed(TD, now, custody.new_key(now)))
    state = SlotState(
        active=Slot(authority=active, since=now), prepared=Slot(authority=prepared, since=now)
    )
    store.save_state(state)
    data = admin_client.get(Secret, "istio-ca-secret", namespace=ns).data or {}
    _no_key(data)
    assert sorted(k for k in data if k.endswith("-key.uri")) and not [
        k for k in data if k.startswith("bulwark-") and k.endswith("-key.pem")
    ]
    assert store.load_state() == state
