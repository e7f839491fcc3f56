"""Fuzzing CSR parsing and PEM loading: arbitrary and mutated input raises only the package's
own errors (CsrError / UnsupportedKey / ChainError), and a valid CSR parses back to its SANs."""

from __future__ import annotations

import base64
import contextlib
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from certs.csr import build_csr, parse_csr
from certs.errors import CertsError
from certs.keys import KeyType, generate_key
from certs.pem import load_certificates, to_pem
from certs.profile import self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain

ME = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")


@cache
def good_csr_der() -> bytes:
    pem = build_csr(generate_key(KeyType.EC_P256), ME)
    return x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER)


@cache
def good_cert_der() -> bytes:
    from datetime import UTC, datetime

    cert = self_signed_root(
        key=generate_key(), trust_domain=TrustDomain("cluster.local"), now=datetime.now(UTC)
    )
    return cert.public_bytes(Encoding.DER)


def pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


def mutated(der: bytes) -> st.SearchStrategy[bytes]:
    """`der` with a few bytes replaced, inserted or cut: mostly-valid ASN.1 reaches deep."""
    edits = st.lists(
        st.tuples(st.integers(0, len(der) - 1), st.integers(0, 255), st.sampled_from("rid")),
        min_size=1,
        max_size=4,
    )

    def apply(changes: list[tuple[int, int, str]]) -> bytes:
        data = bytearray(der)
        for pos, value, kind in changes:
            pos = min(pos, len(data) - 1)
            if kind == "r":
                data[pos] = value
            elif kind == "i":
                data.insert(pos, value)
            elif len(data) > 1:
                del data[pos]
        return bytes(data)

    return edits.map(apply)


@given(st.one_of(st.binary(max_size=2000), st.text(max_size=500).map(str.encode)))
def test_csr_garbage_raises_only_certs_errors(data: bytes) -> None:
    for body in (data, pem(data, "CERTIFICATE REQUEST")):
        with contextlib.suppress(CertsError):
            parse_csr(body)


@given(st.data())
def test_mutated_csr_raises_only_certs_errors(data: st.DataObject) -> None:
    der = data.draw(mutated(good_csr_der()))
    try:
        parsed = parse_csr(pem(der, "CERTIFICATE REQUEST"))
    except CertsError:
        return
    assert all(isinstance(u, str) for u in parsed.uris)


@given(st.sampled_from([KeyType.EC_P256, KeyType.EC_P384]))
def test_csr_round_trip(kind: KeyType) -> None:
    key = generate_key(kind)
    parsed = parse_csr(build_csr(key, ME))
    assert parsed.uris == (str(ME),)
    assert parsed.public_key.public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


@given(st.binary(max_size=2000))
def test_pem_garbage_raises_only_chain_error(data: bytes) -> None:
    for body in (data, pem(data, "CERTIFICATE"), pem(data, "CERTIFICATE") + b"junk"):
        with contextlib.suppress(CertsError):
            load_certificates(body)


@given(st.data())
def test_mutated_certificate_raises_only_chain_error(data: st.DataObject) -> None:
    der = data.draw(mutated(good_cert_der()))
    try:
        certs = load_certificates(pem(der, "CERTIFICATE"))
    except CertsError:
        return
    assert certs


@given(st.integers(1, 4))
def test_pem_round_trip(copies: int) -> None:
    cert = x509.load_der_x509_certificate(good_cert_der())
    loaded = load_certificates("".join([to_pem(cert)] * copies))
    assert loaded == [cert] * copies
