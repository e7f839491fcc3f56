"""The HSM custody in-process, on a real SoftHSM2 token of each test: keys made with the
custody attributes, certificates signed through both signer paths, stores that keep URIs
instead of keys, the worker pipe, the outage/backoff state machine on an injected clock, and
keys that refuse every way out."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ca_server.authority.custody import FILE_CUSTODY, HsmCustody
from ca_server.authority.material import DirectoryKeyStore, create_self_signed, load_or_create
from ca_server.authority.slots.model import Authority, Slot, SlotState
from ca_server.authority.slots.store import decode_state, encode_state
from ca_server.errors import ConfigError
from ca_server.hsm.errors import HsmUnavailable
from ca_server.hsm.generate import generate_keypair
from ca_server.hsm.keys import HsmEcKey, read_key_info
from ca_server.hsm.pin import Pin
from ca_server.hsm.token import HsmToken
from ca_server.hsm.uri import parse
from ca_server.identity import Caller
from ca_server.issuance.signer import Signer, SigningPolicy
from ca_server.process.worker import MaterialPems
from ca_server.spiffe.jwtsvid import custody as jwt_custody
from ca_server.spiffe.jwtsvid.keyset import JwtKeyPolicy, KeySet, decode, encode
from certs.csr import build_csr
from certs.keys import KeyType, generate_key, private_key_pem
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid
from tests.support.softhsm import MODULE, USER_PIN, SoftHsm

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TD = TrustDomain("cluster.local")
WORKLOAD = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def token(softhsm: SoftHsm, clock: Clock) -> Iterator[HsmToken]:
    opened = HsmToken(
        module=MODULE, token_label=softhsm.label, pin=Pin(USER_PIN, "test"), clock=clock
    )
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


def _key(token: HsmToken, label: str, kind: KeyType = KeyType.EC_P256) -> HsmEcKey:
    info = generate_keypair(token, parse(f"pkcs11:token=bulwark;object={label}"), kind)
    custody = HsmCustody(token, info.uri)
    key = custody.initial_key()
    assert isinstance(key, HsmEcKey) or kind is KeyType.RSA_3072
    return key  # type: ignore[return-value]


@pytest.mark.parametrize("kind", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_3072])
def test_generated_keys_stay_in_the_hsm_and_sign_leaves(token: HsmToken, kind: KeyType) -> None:
    info = generate_keypair(token, parse("pkcs11:token=bulwark;object=root"), kind)
    assert (info.sensitive, info.extractable, info.private, info.can_sign) == (
        True,
        False,
        True,
        True,
    )
    assert info.uri.id is not None and len(info.uri.id) == 8 and info.uri.object == "root"
    material = create_self_signed(TD, NOW, HsmCustody(token, info.uri).initial_key())
    material.signing_cert.verify_directly_issued_by(material.signing_cert)
    signer = Signer(
        material=lambda: material,
        policy=SigningPolicy(
            csr_san_policy="strict", default_ttl=timedelta(hours=1), max_ttl=timedelta(days=1)
        ),
        clock=lambda: NOW,
    )
    csr = build_csr(generate_key(), WORKLOAD).decode()
    caller = Caller(
        spiffe_id=WORKLOAD, namespace="demo", service_account="frontend", authenticator="jwt"
    )
    issued = signer.sign(csr_pem=csr, validity_s=0, caller=caller)
    leaf = x509.load_pem_x509_certificate(issued.chain[0].encode())
    verify_svid([leaf], material.roots, now=NOW)  # ECDSA: the DER template; RSA: the builder


def test_the_key_refuses_every_way_out(token: HsmToken) -> None:
    key = _key(token, "root")
    with pytest.raises(TypeError, match="lives in the HSM"):
        private_key_pem(key)
    with pytest.raises(TypeError, match="lives in the HSM"):
        key.private_numbers()
    with pytest.raises(TypeError, match="lives in the HSM"):
        pickle.dumps(key)
    assert USER_PIN not in repr(key)


def test_directory_store_keeps_the_uri_not_the_key(token: HsmToken, tmp_path: Path) -> None:
    key = _key(token, "root")
    custody = HsmCustody(token, key.uri)
    store = DirectoryKeyStore(tmp_path / "ca", custody)
    made = load_or_create(store, TD, NOW, custody)
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == [
        "ca-cert.pem",
        "ca-key.uri",
        "root-bundle.pem",
    ]
    assert (tmp_path / "ca" / "ca-key.uri").read_text().strip() == str(key.uri)
    again = DirectoryKeyStore(tmp_path / "ca", HsmCustody(token, key.uri)).load()
    assert again is not None and again.signing_cert == made.signing_cert
    assert isinstance(again.signing_key, HsmEcKey) and again.signing_key.uri == key.uri
    # The same directory under file custody says where the key is.
    with pytest.raises(ConfigError, match="is in an HSM"):
        DirectoryKeyStore(tmp_path / "ca", FILE_CUSTODY).load()


def test_a_key_file_next_to_an_hsm_key_is_refused(token: HsmToken, tmp_path: Path) -> None:
    key = _key(token, "root")
    store = DirectoryKeyStore(tmp_path / "ca", FILE_CUSTODY)
    load_or_create(store, TD, NOW)  # a CA that had a file key
    with pytest.raises(ConfigError, match="a key that was ever on disk is not an HSM key"):
        DirectoryKeyStore(tmp_path / "ca", HsmCustody(token, key.uri)).load()


def test_a_certificate_for_another_key_is_refused(token: HsmToken, tmp_path: Path) -> None:
    first, second = _key(token, "one"), _key(token, "two")
    custody = HsmCustody(token, first.uri)
    load_or_create(DirectoryKeyStore(tmp_path / "ca", custody), TD, NOW, custody)
    (tmp_path / "ca" / "ca-key.uri").write_text(str(second.uri))
    with pytest.raises(ConfigError, match="does not match the public key of its certificate"):
        DirectoryKeyStore(tmp_path / "ca", HsmCustody(token, first.uri)).load()


def test_slots_store_uris_and_come_back(token: HsmToken) -> None:
    old, new = _key(token, "old"), _key(token, "new")
    custody = HsmCustody(token, old.uri)
    active = Authority.of(create_self_signed(TD, NOW, old))
    prepared = Authority.of(create_self_signed(TD, NOW, new))
    state = SlotState(
        active=Slot(authority=active, since=NOW), prepared=Slot(authority=prepared, since=NOW)
    )
    blobs, record = encode_state(state, custody)
    assert not any(b"PRIVATE KEY" in data for data in blobs.values())
    assert sorted(n.rsplit("-", 1)[1] for n in blobs if "-key" in n) == ["key.uri", "key.uri"]
    back = decode_state(record, blobs, "test", custody)
    assert back == state
    assert isinstance(back.prepared and back.prepared.authority.key, HsmEcKey)


def test_worker_pipe_carries_the_uri_and_the_worker_signs_by_itself(
    token: HsmToken,
    softhsm: SoftHsm,
    clock: Clock,
) -> None:
    key = _key(token, "root")
    material = create_self_signed(TD, NOW, key)
    pems = MaterialPems.of(material)
    assert pems.signing_key == str(key.uri).encode()
    # The worker's own session: no call to the HSM until it signs.
    worker = HsmToken(module=MODULE, token_label=softhsm.label, pin=Pin(USER_PIN, "t"), clock=clock)
    loaded = pems.load(HsmCustody(worker, key.uri, verify=False))
    assert isinstance(loaded.signing_key, HsmEcKey) and loaded.signing_key.token is worker
    assert pickle.loads(pickle.dumps(pems)) == pems  # what crosses the pipe is bytes


def test_outage_backs_off_then_recovers_without_a_restart(
    token: HsmToken,
    softhsm: SoftHsm,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = _key(token, "root")
    data = b"tbs"
    algorithm = ec.ECDSA(hashes.SHA256())
    key.sign(data, algorithm)
    caplog.set_level(logging.DEBUG, logger="ca_server.hsm.token")
    with softhsm.moved_away():
        with pytest.raises(HsmUnavailable):
            key.sign(data, algorithm)
        assert not token.healthy
        with pytest.raises(HsmUnavailable):
            key.sign(data, algorithm)  # within the backoff: refused at once
    with pytest.raises(HsmUnavailable):
        key.sign(data, algorithm)  # the token is back, but the backoff has not run out
    clock.now += 0.3
    signature = key.sign(data, algorithm)  # reconnected: new session, log-in, key found again
    key.public_key().verify(signature, data, algorithm)
    assert token.healthy
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1
    assert "pkcs11:token=bulwark" in lost[0].getMessage()


def test_backoff_grows_while_the_token_stays_away(
    token: HsmToken, softhsm: SoftHsm, clock: Clock
) -> None:
    key = _key(token, "root")
    delays = []
    with softhsm.moved_away():
        for _ in range(6):
            with pytest.raises(HsmUnavailable):
                key.sign(b"x", ec.ECDSA(hashes.SHA256()))
            outage = token._outage
            assert outage is not None
            delays.append(outage.delay)
            clock.now = outage.retry_at
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]


def test_jwt_keys_made_in_the_token_sign_tokens_and_are_destroyed(token: HsmToken) -> None:
    key = _key(token, "root")
    custody = HsmCustody(token, key.uri)
    policy = JwtKeyPolicy(active_life=timedelta(hours=1), max_token_ttl=timedelta(minutes=5))
    entry = jwt_custody.maker(custody)(NOW, policy)
    assert entry.in_hsm and entry.public_pem.startswith(b"-----BEGIN PUBLIC KEY")
    assert decode(encode(KeySet(keys=(entry,)))).keys == (entry,)
    assert b"PRIVATE KEY" not in encode(KeySet(keys=(entry,)))
    signed = jwt.encode({"sub": "x"}, jwt_custody.resolver(custody)(entry), algorithm="ES256")
    assert jwt.decode(signed, entry.public_key(), algorithms=["ES256"]) == {"sub": "x"}
    jwt_custody.destroy(custody, entry)
    with pytest.raises(ConfigError, match="no private key matches"):
        read_key_info(token, parse(entry.private_pem.decode()))


def test_no_openssl_error_left_for_the_next_tls_read(softhsm: SoftHsm) -> None:
    """SoftHSM2's C_Initialize leaves a failed ENGINE lookup on this thread's OpenSSL error
    queue, which Python's ssl (same libcrypto) would raise on the thread's next TLS read (seen
    as `[ENGINE: NO_SUCH_ENGINE]` from the Kubernetes client): every token call clears it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("crypto")
    assert name is not None
    libcrypto = ctypes.CDLL(name)
    libcrypto.ERR_clear_error()
    opened = HsmToken(module=MODULE, token_label=softhsm.label, pin=Pin(USER_PIN, "t"))
    opened.open()
    try:
        key = _key(opened, "root")
        assert libcrypto.ERR_peek_error() == 0
        key.sign(b"x", ec.ECDSA(hashes.SHA256()))
        assert libcrypto.ERR_peek_error() == 0
    finally:
        opened.close()
    assert libcrypto.ERR_peek_error() == 0
