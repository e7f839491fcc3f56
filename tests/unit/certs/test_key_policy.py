"""Keys exactly per docs/COMPATIBILITY.md §1: EC P-256/P-384, RSA 2048-8192 with e = 65537, nothing else.

Defect (505d662): an RSA-PSS SubjectPublicKeyInfo and RSA exponents 2^40+15 or 2040 bits
were accepted (Go refuses e > 2^31-1, BoringSSL e over 33 bits).
"""

from __future__ import annotations

import pytest

from certs.csr import parse_csr
from certs.errors import UnsupportedKey
from certs.keys import KeyType, check_public_key, generate_key
from tests.support import broken
from tests.support.broken import csr_pem

ME = "spiffe://cluster.local/ns/demo/sa/frontend"


@pytest.mark.parametrize("exponent", [3, 17, 2**40 + 15])
def test_rsa_exponents_other_than_65537_are_refused(exponent: int) -> None:
    key = broken.rsa_with_exponent(exponent).public_key()
    with pytest.raises(UnsupportedKey, match="exponent"):
        check_public_key(key)
    with pytest.raises(UnsupportedKey, match="exponent"):
        parse_csr(csr_pem(broken.rsa_with_exponent(exponent), uris=(ME,)))


def test_a_2040_bit_exponent_is_refused_without_echoing_it() -> None:
    key = broken.rsa_with_exponent(broken.huge_exponent())
    with pytest.raises(UnsupportedKey) as err:
        parse_csr(csr_pem(key, uris=(ME,)))
    assert "2040 bits" in str(err.value)
    assert len(str(err.value)) < 200


def test_rsa_pss_spki_is_refused() -> None:
    with pytest.raises(UnsupportedKey, match=r"1\.2\.840\.113549\.1\.1\.10"):
        parse_csr(broken.rsa_pss_csr(ME))


@pytest.mark.parametrize("kind", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_allowed_keys_pass(kind: KeyType) -> None:
    parsed = parse_csr(csr_pem(generate_key(kind), uris=(ME,)))
    assert parsed.uris == (ME,)


def test_ed25519_only_when_enabled() -> None:
    csr = csr_pem(broken.ed25519_key(), uris=(ME,))
    with pytest.raises(UnsupportedKey, match="Ed25519"):
        parse_csr(csr)
    assert parse_csr(csr, allow_ed25519=True).uris == (ME,)


def test_a_csr_of_an_undefined_version_is_a_csr_error() -> None:
    """Defect found by tests/fuzz: cryptography's InvalidVersion is not a ValueError and
    escaped parse_csr (INTERNAL at the CA, traceback in its log)."""
    from certs.errors import CsrError

    with pytest.raises(CsrError, match="valid PKCS#10"):
        parse_csr(broken.bad_version_csr(csr_pem(generate_key(), uris=(ME,))))


def test_a_certificate_of_an_undefined_version_is_a_chain_error() -> None:
    import base64
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.serialization import Encoding

    from certs.errors import ChainError
    from certs.pem import load_certificates
    from certs.profile import self_signed_root
    from certs.spiffe_id import TrustDomain

    root = self_signed_root(
        key=generate_key(), trust_domain=TrustDomain("td"), now=datetime.now(UTC)
    )
    der = root.public_bytes(Encoding.DER)
    at = der.index(b"\xa0\x03\x02\x01\x02")  # [0] EXPLICIT version INTEGER 2 (v3)
    der = der[:at] + b"\xa0\x03\x02\x01\x09" + der[at + 5 :]
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ChainError, match="cannot be parsed"):
        load_certificates(pem)
