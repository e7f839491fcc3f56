"""Certificate profiles of SPEC §1: the workload leaf and the CA certificate.

One builder helper serves both, so the extensions every certificate carries
(SKI, AKI) are written in one place.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from cryptography import x509
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
    """The self-signed CA root of SPEC §1: O = trust domain, keyCertSign + cRLSign."""
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
