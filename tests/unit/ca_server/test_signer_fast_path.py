"""The signer's template path answers without re-parsing the certificate it made (issue #18).

What it sends and records must be what the parse-based path produced for the same template:
the same leaf content (SAN, EKU, validity, serial), the same PEM text and the same record
fields; and a faulty signature must still fail the call with nothing issued.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

import ca_server.issuance.signer as signer_module
import certs.profile as profile_module
from ca_server.authority.material import create_self_signed
from ca_server.errors import SigningFailed
from ca_server.identity import Caller
from ca_server.issuance.signer import Signer, SigningPolicy
from ca_server.record.entry import X509_SVID
from certs.csr import build_csr, parse_csr
from certs.keys import KeyType, generate_key
from certs.pem import der_to_pem, serial_hex, to_pem
from certs.profile import LeafTemplate, leaf_certificate
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_issued, verify_svid

TD = TrustDomain("cluster.local")
NOW = datetime(2026, 11, 30, 12, 0, 7, 654321, tzinfo=UTC)  # microseconds: truncation matters
SID = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/cart")
CALLER = Caller(
    spiffe_id=SID,
    namespace="shop",
    service_account="cart",
    authenticator="jwt",
    subject="system:serviceaccount:shop:cart",
    pod_name="cart-1",
    pod_uid="uid-1",
    cluster_id="Kubernetes",
    peer="ipv4:127.0.0.1:5555",
)
SERIAL = 0x80FF_0000_1111_2222_3333_4444_5555_6666  # top bit set: DER needs a leading zero


def _signer(material: object, max_ttl: timedelta = timedelta(days=2)) -> Signer:
    policy = SigningPolicy(
        csr_san_policy="strict", default_ttl=timedelta(hours=24), max_ttl=max_ttl
    )
    return Signer(material=lambda: material, policy=policy, clock=lambda: NOW)  # type: ignore[arg-type,return-value]


@pytest.fixture
def fixed_serial(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(signer_module, "random_serial", lambda: SERIAL)
    monkeypatch.setattr(profile_module, "random_serial", lambda: SERIAL)
    return SERIAL


@pytest.mark.parametrize("leaf_kind", [KeyType.EC_P256, KeyType.RSA_2048])
@pytest.mark.parametrize("validity_s", [0, 3600, 47 * 3600 + 59])
def test_fast_path_sends_and_records_what_the_parsed_certificate_says(
    fixed_serial: int, leaf_kind: KeyType, validity_s: int
) -> None:
    material = create_self_signed(TD, NOW - timedelta(days=1))
    key = generate_key(leaf_kind)
    csr = build_csr(key, SID).decode()
    issued = _signer(material).sign(csr_pem=csr, validity_s=validity_s, caller=CALLER)

    leaf = x509.load_pem_x509_certificate(issued.chain[0].encode())
    # The PEM is the one the old path wrote (to_pem of the parsed certificate) ...
    assert to_pem(leaf) == issued.chain[0]
    # ... its content is the builder profile's, byte for byte, for the same serial and clock
    ttl = timedelta(seconds=validity_s) if validity_s else timedelta(hours=24)
    built = leaf_certificate(
        spiffe_id=SID,
        public_key=key.public_key(),
        issuer_cert=material.signing_cert,
        issuer_key=material.signing_key,
        now=NOW,
        ttl=ttl,
    )
    assert leaf.tbs_certificate_bytes == built.tbs_certificate_bytes
    assert leaf.serial_number == fixed_serial
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        str(SID)
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # ... and it still conforms and verifies up to the roots.
    verify_issued(leaf.public_bytes(Encoding.DER), material.signing_cert, now=NOW)
    verify_svid([leaf, *material.chain], material.roots, now=NOW)

    # The record entry holds what the old path read back from the parsed certificate.
    entry = issued.entry
    assert entry.serial == serial_hex(leaf)
    assert entry.not_before == leaf.not_valid_before_utc
    assert entry.not_after == leaf.not_valid_after_utc
    assert entry.not_before.tzinfo is not None and entry.not_before.microsecond == 0
    assert entry.certificate_pem == issued.chain[0]
    assert entry.csr_sha256 == parse_csr(csr).sha256
    assert entry.issuer_serial == serial_hex(material.signing_cert)
    assert entry.kind == X509_SVID
    assert (entry.spiffe_id, entry.namespace, entry.service_account) == (str(SID), "shop", "cart")
    assert (entry.pod_name, entry.pod_uid, entry.peer, entry.cluster_id) == (
        "cart-1",
        "uid-1",
        "ipv4:127.0.0.1:5555",
        "Kubernetes",
    )
    assert issued.chain[1:] == material.response_tail()


def test_validity_is_capped_at_the_issuers_end(fixed_serial: int) -> None:
    material = create_self_signed(TD, NOW - timedelta(days=1))
    template = LeafTemplate(material.signing_cert, material.signing_key)
    spki = parse_csr(build_csr(generate_key(), SID)).spki
    made = template.issue(spiffe_id=SID, spki=spki, now=NOW, ttl=timedelta(days=9000), serial=7)
    leaf = x509.load_der_x509_certificate(made.der)
    assert made.not_after == leaf.not_valid_after_utc == material.signing_cert.not_valid_after_utc
    assert made.not_before == leaf.not_valid_before_utc


def test_a_faulty_signature_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signer that returns a bad signature (fault, broken HSM) is caught by the one
    self-check the fast path keeps: nothing is issued, the call fails."""
    material = create_self_signed(TD, NOW - timedelta(days=1))
    signer = _signer(material)
    csr = build_csr(generate_key(), SID).decode()
    signer.sign(csr_pem=csr, validity_s=0, caller=CALLER)  # prepares the template first
    original = LeafTemplate._signed

    def corrupt(self: LeafTemplate, tbs: bytes) -> tuple[bytes, bytes]:
        der, signature = original(self, tbs)
        bad = bytearray(signature)
        bad[-3] ^= 0x01
        return der.replace(signature, bytes(bad)), bytes(bad)

    monkeypatch.setattr(LeafTemplate, "_signed", corrupt)
    with pytest.raises(SigningFailed):
        signer.sign(csr_pem=csr, validity_s=0, caller=CALLER)


@pytest.mark.parametrize(
    "kind", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.RSA_4096]
)
def test_der_to_pem_matches_to_pem(kind: KeyType) -> None:
    """PEM text built from DER bytes is what cryptography writes, for lengths on and off
    the 48-byte base64 line boundary."""
    key = generate_key(kind)
    for days in (1, 400, 5000):
        root = profile_module.self_signed_root(
            key=key, trust_domain=TD, now=NOW, lifetime=timedelta(days=days)
        )
        der = root.public_bytes(Encoding.DER)
        assert der_to_pem(der) == to_pem(root)
