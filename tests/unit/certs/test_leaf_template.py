"""The DER leaf template produces exactly what the CertificateBuilder profile produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certs.keys import KeyType, generate_key
from certs.profile import LeafTemplate, leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import svid_violations

TD = TrustDomain("cluster.local")


@pytest.mark.parametrize("issuer_kind", [KeyType.EC_P256, KeyType.EC_P384])
@pytest.mark.parametrize(
    "leaf_kind", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.ED25519]
)
@pytest.mark.parametrize("ttl", [timedelta(hours=1), timedelta(days=365 * 40)])
def test_template_matches_builder(issuer_kind: KeyType, leaf_kind: KeyType, ttl: timedelta) -> None:
    now = datetime(2026, 11, 25, 17, 0, 5, 123456, tzinfo=UTC)
    issuer_key = generate_key(issuer_kind)
    root = self_signed_root(
        key=issuer_key, trust_domain=TD, now=now, lifetime=timedelta(days=365 * 50)
    )
    leaf_key = generate_key(leaf_kind).public_key()
    sid = SpiffeId(TD, "/ns/ns-" + "x" * 100 + "/sa/sa")  # a long (non-Kubernetes) path
    built = leaf_certificate(
        spiffe_id=sid,
        public_key=leaf_key,
        issuer_cert=root,
        issuer_key=issuer_key,
        now=now,
        ttl=ttl,
    )
    template = LeafTemplate(root, issuer_key)
    spki = leaf_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    der = template.leaf_der(spiffe_id=sid, spki=spki, now=now, ttl=ttl, serial=built.serial_number)
    made = x509.load_der_x509_certificate(der)
    assert made.tbs_certificate_bytes == built.tbs_certificate_bytes
    made.verify_directly_issued_by(root)
    assert svid_violations(made) == []


def test_template_refuses_rsa_issuer() -> None:
    key = generate_key(KeyType.RSA_2048)
    root = self_signed_root(key=key, trust_domain=TD, now=datetime.now(UTC))
    assert not LeafTemplate.supports(key)
    with pytest.raises(ValueError):
        LeafTemplate(root, key)


def test_verify_issued_catches_a_bad_signature_and_a_foreign_issuer() -> None:
    from certs.errors import ChainError
    from certs.verify import verify_issued

    now = datetime.now(UTC)
    key = generate_key()
    root = self_signed_root(key=key, trust_domain=TD, now=now)
    other = self_signed_root(key=generate_key(), trust_domain=TD, now=now)
    template = LeafTemplate(root, key)
    spki = generate_key().public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    sid = SpiffeId.for_service_account(TD, "ns", "sa")
    der = template.leaf_der(spiffe_id=sid, spki=spki, now=now, ttl=timedelta(hours=1), serial=7)
    leaf, got = verify_issued(der, root, now=now, issuer_key=template.issuer_public_key)
    assert got == sid and leaf.serial_number == 7
    tampered = der[:-3] + bytes([der[-3] ^ 1]) + der[-2:]
    for issuer_key in (None, template.issuer_public_key):
        with pytest.raises(ChainError):
            verify_issued(tampered, root, now=now, issuer_key=issuer_key)
    with pytest.raises(ChainError):
        verify_issued(der, other, now=now)
    with pytest.raises(ChainError):
        verify_issued(
            der, root, now=now + timedelta(hours=2), issuer_key=template.issuer_public_key
        )
