"""The SPIFFE bundle document, in-process: what is refused (and under which reason label),
what round-trips, and which bundle may replace which (`spiffe_sequence`)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certs.errors import InvalidBundle
from certs.keys import KeyType, generate_key
from certs.profile import self_signed_root
from certs.spiffe_bundle import (
    REFUSAL_REASONS,
    SpiffeBundle,
    check_successor,
    parse_bundle,
    x509_authority,
)
from certs.spiffe_id import TrustDomain
from tests.support.bundle_server import b64url, bundle, jwt_jwk, leaf_jwk, root_jwk


def _ca_without_basic_constraints() -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "peer.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return x509_authority(cert)


def _weak_rsa_root() -> dict[str, Any]:
    return root_jwk(key=rsa.generate_private_key(public_exponent=65537, key_size=1024))


def _weak_rsa_jwt() -> dict[str, Any]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    n = numbers.public_numbers().n.to_bytes(128, "big")
    return {"use": "jwt-svid", "kid": "weak", "kty": "RSA", "n": b64url(n), "e": "AQAB"}


def _secp256k1_root() -> dict[str, Any]:
    """A CA certificate on a curve with no JWK name here (the writer has no form for it)."""
    key = ec.generate_private_key(ec.SECP256K1())
    root = self_signed_root(key=key, trust_domain=TrustDomain("peer.test"), now=datetime.now(UTC))
    der = base64.b64encode(root.public_bytes(Encoding.DER)).decode()
    return {**ROOT, "x5c": [der]}


ROOT = root_jwk()
JWT = jwt_jwk("k1")
REFUSED = [
    ("leaf as authority", lambda: [leaf_jwk()], "not_a_ca", "not a CA certificate"),
    ("no basicConstraints", lambda: [_ca_without_basic_constraints()], "not_a_ca", "CA:false or missing"),
    ("RSA-1024 root", lambda: [_weak_rsa_root()], "weak_key", "1024 bits"),
    ("RSA-1024 JWT key", lambda: [_weak_rsa_jwt()], "weak_key", "1024 bits"),
    ("oct JWT key", lambda: [{"use": "jwt-svid", "kid": "s", "kty": "oct", "k": "c2VjcmV0"}], "symmetric_key", "symmetric"),
    ("oct beside a good key", lambda: [JWT, {"use": "jwt-svid", "kid": "s", "kty": "oct", "k": "eA"}], "symmetric_key", "kty oct"),
    ("oct on a root", lambda: [{**ROOT, "kty": "oct"}], "symmetric_key", "symmetric"),
    ("private EC JWT key", lambda: [{**JWT, "d": "AAAA"}], "private_key", "private key members (d)"),
    ("private member on a root", lambda: [{**ROOT, "d": "AAAA"}], "private_key", "(d)"),
    ("unknown kty", lambda: [{**JWT, "kty": "XYZ"}], "unknown_key_type", "'XYZ' is not known"),
    ("no kty", lambda: [{k: v for k, v in JWT.items() if k != "kty"}], "unknown_key_type", "None is not known"),
    ("unknown curve", lambda: [{**JWT, "crv": "secp256k1"}], "unknown_key_type", "curve 'secp256k1'"),
    ("root on secp256k1", lambda: [_secp256k1_root()], "unknown_key_type", "secp256k1"),
    ("OKP X25519", lambda: [{"use": "jwt-svid", "kid": "x", "kty": "OKP", "crv": "X25519", "x": "A" * 43}], "unknown_key_type", "not known"),
    ("kty not the certificate's", lambda: [{**ROOT, "kty": "RSA"}], "malformed", "not its certificate's EC"),
    ("short EC coordinates", lambda: [{**JWT, "x": "AAAA"}], "malformed", "32 bytes"),
    ("no kid", lambda: [{k: v for k, v in JWT.items() if k != "kid"}], "malformed", "needs a `kid`"),
    ("unknown use", lambda: [{**JWT, "use": "enc"}], "malformed", "x509-svid or jwt-svid"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "keys", "reason", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_keys_name_their_reason(name: str, keys: Any, reason: str, words: str) -> None:
    with pytest.raises(InvalidBundle) as err:
        parse_bundle(bundle(keys(), sequence=1))
    assert err.value.reason == reason and reason in REFUSAL_REASONS
    assert words in str(err.value)
    assert "c2VjcmV0" not in str(err.value)  # a secret never appears in the message


BAD_FIELDS = [
    ("sequence a string", {"spiffe_sequence": "7"}, "spiffe_sequence"),
    ("sequence negative", {"spiffe_sequence": -1}, "spiffe_sequence"),
    ("sequence a boolean", {"spiffe_sequence": True}, "spiffe_sequence"),
    ("hint a fraction", {"spiffe_refresh_hint": 1.5}, "spiffe_refresh_hint"),
    ("hint negative", {"spiffe_refresh_hint": -5}, "spiffe_refresh_hint"),
]


@pytest.mark.parametrize(("name", "fields", "words"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_top_level_fields_are_refused(name: str, fields: dict[str, Any], words: str) -> None:
    doc = {"keys": [JWT], **fields}
    with pytest.raises(InvalidBundle, match=words) as err:
        parse_bundle(json.dumps(doc).encode())
    assert err.value.reason == "malformed"


def test_a_good_bundle_round_trips_through_the_one_writer() -> None:
    rsa_root = root_jwk(key=generate_key(KeyType.RSA_2048))
    ed_root = root_jwk(key=generate_key(KeyType.ED25519))
    data = bundle([ROOT, rsa_root, ed_root, JWT], sequence=9, hint=30)
    parsed = parse_bundle(data)
    assert (parsed.sequence, parsed.refresh_hint) == (9, 30)
    assert [k["kid"] for k in json.loads(parsed.jwks)["keys"]] == ["k1"]
    assert parsed.document() == json.loads(data)  # our writer spells it as it was read
    assert parse_bundle(parsed.to_json()) == parsed
    assert parse_bundle(bundle([JWT], sequence=1, hint=0)).refresh_hint is None
    assert parsed.jwt_key("k1") == JWT and parsed.jwt_key("nope") is None


def test_sequence_may_not_go_back_nor_disappear() -> None:
    def of(sequence: int | None) -> SpiffeBundle:
        return parse_bundle(bundle([JWT], sequence=sequence))

    check_successor(None, of(1))
    check_successor(of(None), of(None))
    check_successor(of(5), of(5))  # the same revision, fetched again
    check_successor(of(5), of(6))
    for lower in (of(4), of(None)):
        with pytest.raises(InvalidBundle) as err:
            check_successor(of(5), lower)
        assert err.value.reason == "sequence_regressed" and "5" in str(err.value)
