"""Certificate profiles of docs/COMPATIBILITY.md §1: the workload leaf and the CA certificate.

One builder helper serves both, so the extensions every certificate carries
(SKI, AKI) are written in one place.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.keys import PrivateKey, PublicKey, signature_hash
from certs.spiffe_id import SpiffeId, TrustDomain

LEAF_BACKDATE = timedelta(minutes=2)
ROOT_LIFETIME = timedelta(days=3650)

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def random_serial() -> int:
    """A positive serial with 128 bits of entropy."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
    issuer_ski: x509.SubjectKeyIdentifier,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )


def leaf_certificate(
    *,
    spiffe_id: SpiffeId | None,
    public_key: PublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    now: datetime,
    ttl: timedelta,
    dns_names: tuple[str, ...] = (),
) -> x509.Certificate:
    """A workload X.509-SVID (or, with only DNS names, the CA's own serving certificate):
    empty subject, one critical SAN, NotAfter capped at the issuer's."""
    not_after = min(now + ttl, issuer_cert.not_valid_after_utc)
    names: list[x509.GeneralName] = []
    if spiffe_id is not None:
        names.append(x509.UniformResourceIdentifier(str(spiffe_id)))
    names.extend(x509.DNSName(d) for d in dns_names)
    builder = (
        _builder(
            x509.Name([]),
            issuer_cert.subject,
            public_key,
            now - LEAF_BACKDATE,
            not_after,
            _ski_of(issuer_cert),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def self_signed_root(
    *,
    key: PrivateKey,
    trust_domain: TrustDomain,
    now: datetime,
    lifetime: timedelta = ROOT_LIFETIME,
) -> x509.Certificate:
    """The self-signed CA root of docs/COMPATIBILITY.md §1: O = trust domain, keyCertSign + cRLSign."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain.name)])
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        _builder(name, name, public_key, now - LEAF_BACKDATE, now + lifetime, ski)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
    )
    return builder.sign(key, signature_hash(key))


def _ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


# --- Workload leaf as a DER template -------------------------------------------------------
# The CA signs thousands of leaves that differ only in serial, validity, public key and URI.
# `LeafTemplate` pre-encodes everything else once per issuer and splices the variable parts in,
# producing byte for byte what `leaf_certificate` builds (tests/unit/certs/test_leaf_template.py).

_OID_ECDSA_SHA256 = bytes.fromhex("06082a8648ce3d040302")
_OID_ECDSA_SHA384 = bytes.fromhex("06082a8648ce3d040303")
_VERSION_V3 = bytes.fromhex("a003020102")
_EMPTY_NAME = b"\x30\x00"
_OID_SKI = bytes.fromhex("0603551d0e")
# SEQUENCE { OID subjectKeyIdentifier, OCTET STRING { OCTET STRING (20 bytes) } }: all but the id
_SKI_PREFIX = b"\x30\x1d" + _OID_SKI + b"\x04\x16\x04\x14"
_OID_AKI = bytes.fromhex("0603551d23")
_OID_SAN = bytes.fromhex("0603551d11")
_CRITICAL = b"\x01\x01\xff"
# BasicConstraints CA:false (critical), KeyUsage digitalSignature+keyEncipherment (critical),
# ExtendedKeyUsage serverAuth+clientAuth: the same for every workload leaf.
_FIXED_LEAF_EXTENSIONS = bytes.fromhex(
    "300c0603551d130101ff04023000"
    "300e0603551d0f0101ff0404030205a0"
    "301d0603551d250416301406082b0601050507030106082b06010505070302"
)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(content)) + content


def _der_time(t: datetime) -> bytes:
    """UTCTime through 2049, GeneralizedTime after (RFC 5280 §4.1.2.5); whole seconds."""
    if 1950 <= t.year < 2050:
        return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def _spki_key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING contents (what RFC 5280 method 1 hashes for the SKI)."""

    def header(buf: bytes, pos: int) -> tuple[int, int]:  # -> (content start, content length)
        first = buf[pos + 1]
        if first < 0x80:
            return pos + 2, first
        n = first & 0x7F
        return pos + 2 + n, int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")

    start, _ = header(spki, 0)  # SubjectPublicKeyInfo SEQUENCE
    alg_start, alg_len = header(spki, start)  # AlgorithmIdentifier
    bits_start, bits_len = header(spki, alg_start + alg_len)  # BIT STRING
    return spki[bits_start + 1 : bits_start + bits_len]  # skip the unused-bits octet


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateLeaf:
    """A leaf `LeafTemplate.issue` made: its DER and the values it encodes."""

    der: bytes
    tbs: bytes
    signature: bytes
    serial: int
    not_before: datetime  # whole seconds, as encoded
    not_after: datetime


class LeafTemplate:
    """Pre-encoded workload leaf profile for one ECDSA issuer (P-256 with SHA-256, P-384 with
    SHA-384); `supports` says whether an issuer key can use it."""

    def __init__(self, issuer_cert: x509.Certificate, issuer_key: PrivateKey) -> None:
        if not self.supports(issuer_key):
            raise ValueError("LeafTemplate needs an ECDSA P-256 or P-384 issuer key")
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
        self._key = issuer_key
        self.issuer_cert = issuer_cert
        self.issuer_public_key = issuer_key.public_key()
        self.issuer_not_after = issuer_cert.not_valid_after_utc
        p384 = isinstance(issuer_key.curve, ec.SECP384R1)
        self._algorithm = ec.ECDSA(hashes.SHA384() if p384 else hashes.SHA256())
        self._sig_alg = _tlv(0x30, _OID_ECDSA_SHA384 if p384 else _OID_ECDSA_SHA256)
        self._issuer_name = issuer_cert.subject.public_bytes()
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski_of(issuer_cert))
        assert aki.key_identifier is not None
        self._aki_ext = _tlv(
            0x30, _OID_AKI + _tlv(0x04, _tlv(0x30, _tlv(0x80, aki.key_identifier)))
        )
        self._head = _VERSION_V3  # then the serial
        self._issuer_part = self._sig_alg + self._issuer_name  # after the serial
        # The last validity encoded: certificates signed in the same second with the same
        # lifetime (a batch) share it.
        self._validity: tuple[datetime, datetime, bytes] | None = None

    @staticmethod
    def supports(issuer_key: PrivateKey) -> bool:
        return isinstance(issuer_key, ec.EllipticCurvePrivateKey) and isinstance(
            issuer_key.curve, (ec.SECP256R1, ec.SECP384R1)
        )

    def tbs(
        self, *, serial: int, spki: bytes, uri: str, not_before: datetime, not_after: datetime
    ) -> bytes:
        """The DER TBSCertificate of a leaf for `uri` holding the key `spki` (DER)."""
        ski = hashlib.sha1(_spki_key_bits(spki)).digest()  # RFC 5280 key id
        san = _tlv(0x30, _tlv(0x86, uri.encode()))
        extensions = b"".join(
            (
                _SKI_PREFIX,  # the SKI extension up to its 20-byte key id
                ski,
                self._aki_ext,
                _FIXED_LEAF_EXTENSIONS,
                _tlv(0x30, _OID_SAN + _CRITICAL + _tlv(0x04, san)),
            )
        )
        return _tlv(
            0x30,
            b"".join(
                (
                    self._head,
                    _tlv(0x02, serial.to_bytes((serial.bit_length() + 8) // 8, "big")),
                    self._issuer_part,
                    self._validity_der(not_before, not_after),
                    _EMPTY_NAME,
                    spki,
                    _tlv(0xA3, _tlv(0x30, extensions)),
                )
            ),
        )

    def _validity_der(self, not_before: datetime, not_after: datetime) -> bytes:
        cached = self._validity
        if cached is not None and cached[0] == not_before and cached[1] == not_after:
            return cached[2]
        der = _tlv(0x30, _der_time(not_before) + _der_time(not_after))
        self._validity = (not_before, not_after, der)
        return der

    def sign(self, tbs: bytes) -> bytes:
        """The DER certificate: `tbs`, the signature algorithm and the issuer's signature."""
        return self._signed(tbs)[0]

    def _signed(self, tbs: bytes) -> tuple[bytes, bytes]:
        signature = self._key.sign(tbs, self._algorithm)
        return _tlv(0x30, tbs + self._sig_alg + _tlv(0x03, b"\x00" + signature)), signature

    def issue(
        self, *, spiffe_id: SpiffeId, spki: bytes, now: datetime, ttl: timedelta, serial: int
    ) -> TemplateLeaf:
        """`leaf_der` plus the values encoded in it (validity in whole seconds, as the DER
        holds it), so the caller needs no parse of the certificate it has just made."""
        not_before = (now - LEAF_BACKDATE).replace(microsecond=0)
        not_after = min(now + ttl, self.issuer_not_after).replace(microsecond=0)
        tbs = self.tbs(
            serial=serial, spki=spki, uri=str(spiffe_id), not_before=not_before, not_after=not_after
        )
        der, signature = self._signed(tbs)
        return TemplateLeaf(
            der=der,
            tbs=tbs,
            signature=signature,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
        )

    def check_signature(self, leaf: TemplateLeaf) -> None:
        """Verify `leaf`'s signature over its TBS with the issuer's public key (the self-check
        Go's x509.CreateCertificate makes); raises `InvalidSignature` on a faulty signature."""
        self.issuer_public_key.verify(leaf.signature, leaf.tbs, self._algorithm)

    def leaf_der(
        self, *, spiffe_id: SpiffeId, spki: bytes, now: datetime, ttl: timedelta, serial: int
    ) -> bytes:
        """What `leaf_certificate` builds for a workload, as DER, at a fraction of its cost."""
        return self.issue(spiffe_id=spiffe_id, spki=spki, now=now, ttl=ttl, serial=serial).der
