"""certs.verify on its own: chain verification and every X.509-SVID leaf rule, in-process."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from certs.errors import ChainError, SvidError
from certs.keys import generate_key
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import spiffe_id_of, svid_violations, verify_chain, verify_issued, verify_svid

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ID = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")
Root = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@pytest.fixture(scope="module")
def root() -> Root:
    key = generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return self_signed_root(key=key, trust_domain=TrustDomain("cluster.local"), now=NOW), key


def _leaf(
    root: Root, *, spiffe_id: SpiffeId = ID, ttl: timedelta = timedelta(hours=1)
) -> x509.Certificate:
    cert, key = root
    return leaf_certificate(
        spiffe_id=spiffe_id,
        public_key=generate_key().public_key(),
        issuer_cert=cert,
        issuer_key=key,
        now=NOW,
        ttl=ttl,
    )


def _custom_leaf(
    root: Root,
    *,
    sans: list[x509.GeneralName] | None,
    san_critical: bool = True,
    ca: bool = False,
    ku: x509.KeyUsage | None = None,
    ku_critical: bool = True,
    subject: Iterable[x509.NameAttribute[str]] = (),
) -> x509.Certificate:
    """A leaf built by hand, to break one SVID rule at a time."""
    cert, key = root
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(list(subject)))
        .issuer_name(cert.subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=san_critical)
    if ku is not None:
        builder = builder.add_extension(ku, critical=ku_critical)
    return builder.sign(key, hashes.SHA256())


def _ku(*, digital_signature: bool = True, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def test_a_profile_leaf_conforms_and_verifies(root: Root) -> None:
    leaf = _leaf(root)
    assert svid_violations(leaf) == []
    assert spiffe_id_of(leaf) == ID
    assert verify_svid([leaf], [root[0]], now=NOW) == ID
    path = verify_chain([leaf, root[0]], [root[0]], now=NOW)
    assert path[0] == leaf and path[-1] == root[0]


URI = x509.UniformResourceIdentifier(str(ID))


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"sans": None, "ku": _ku()}, "no SubjectAlternativeName"),
        ({"sans": [URI, URI], "ku": _ku()}, "has 2 URI SANs"),
        ({"sans": [x509.DNSName("a.example")], "ku": _ku()}, "has 0 URI SANs"),
        (
            {"sans": [x509.UniformResourceIdentifier("spiffe://cluster.local")], "ku": _ku()},
            "not a valid workload SPIFFE ID",
        ),
        ({"sans": [URI], "san_critical": False, "ku": _ku()}, "not critical (RFC 5280)"),
        ({"sans": [URI], "ca": True, "ku": _ku()}, "CA:true"),
        ({"sans": [URI]}, "KeyUsage extension is missing"),
        ({"sans": [URI], "ku": _ku(), "ku_critical": False}, "KeyUsage extension is not critical"),
        ({"sans": [URI], "ku": _ku(digital_signature=False)}, "lacks digitalSignature"),
        ({"sans": [URI], "ku": _ku(key_cert_sign=True)}, "keyCertSign or cRLSign"),
    ],
)
def test_each_svid_rule_is_reported(root: Root, kwargs: dict[str, Any], problem: str) -> None:
    leaf = _custom_leaf(root, **kwargs)
    problems = svid_violations(leaf)
    assert any(problem in p for p in problems), problems
    with pytest.raises(SvidError):
        spiffe_id_of(leaf)


def test_verify_chain_refuses_empty_inputs_and_a_foreign_root(root: Root) -> None:
    leaf = _leaf(root)
    with pytest.raises(ChainError, match="chain is empty"):
        verify_chain([], [root[0]], now=NOW)
    with pytest.raises(ChainError, match="no trusted roots"):
        verify_chain([leaf], [], now=NOW)
    other_key = generate_key()
    other = self_signed_root(key=other_key, trust_domain=TrustDomain("other.test"), now=NOW)
    with pytest.raises(ChainError, match="does not verify"):
        verify_chain([leaf], [other], now=NOW)


def test_verify_chain_refuses_an_expired_leaf(root: Root) -> None:
    leaf = _leaf(root, ttl=timedelta(minutes=5))
    with pytest.raises(ChainError):
        verify_chain([leaf], [root[0]], now=NOW + timedelta(hours=1))


def test_verify_issued_checks_signature_time_and_svid(root: Root) -> None:
    cert, key = root
    leaf = _leaf(root)
    der = leaf.public_bytes(Encoding.DER)
    got, spiffe_id = verify_issued(der, cert, now=NOW)
    assert got == leaf and spiffe_id == ID
    got, _ = verify_issued(der, cert, now=NOW, issuer_key=key.public_key())
    assert got == leaf
    with pytest.raises(ChainError, match="not valid now"):
        verify_issued(der, cert, now=NOW + timedelta(days=1))
    other_key = generate_key()
    assert isinstance(other_key, ec.EllipticCurvePrivateKey)
    with pytest.raises(ChainError, match="not signed by its issuer"):
        verify_issued(der, cert, now=NOW, issuer_key=other_key.public_key())
    with pytest.raises(ChainError, match="not signed by its issuer"):
        verify_issued(b"not DER", cert, now=NOW)
