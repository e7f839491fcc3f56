"""Throwaway CA certificates (EC and RSA roots, an intermediate) for admin API tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.keys import PrivateKey


def ca_cert(
    name: str, key: PrivateKey, issuer: tuple[x509.Certificate, PrivateKey] | None = None
) -> x509.Certificate:
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def roots_and_intermediate() -> tuple[list[x509.Certificate], x509.Certificate]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_root = ca_cert("root-ec", ec_key)
    rsa_root = ca_cert("root-rsa", rsa_key)
    inter = ca_cert("intermediate", ec.generate_private_key(ec.SECP256R1()), (ec_root, ec_key))
    return [ec_root, rsa_root], inter
