"""PEM chains in and out, and certificate fingerprints."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.errors import ChainError


def load_certificates(data: bytes | str, *, what: str = "PEM data") -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; `ChainError` if there are none."""
    raw = data.encode() if isinstance(data, str) else data
    if b"-----BEGIN CERTIFICATE-----" not in raw:
        raise ChainError(f"{what} holds no 'BEGIN CERTIFICATE' block")
    try:
        return x509.load_pem_x509_certificates(raw)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError (fuzzing)
        raise ChainError(f"{what} holds a certificate that cannot be parsed") from exc


def to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def bundle_pem(certs: Iterable[x509.Certificate]) -> str:
    """Certificates concatenated as one PEM string."""
    return "".join(to_pem(c) for c in certs)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` shows it."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as lowercase hex, the form the record and the CLI use."""
    return format(cert.serial_number, "x")


def der_to_pem(der: bytes) -> str:
    """A DER certificate as PEM, exactly as `to_pem` writes it, without parsing it."""
    text = base64.b64encode(der).decode("ascii")
    lines = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"
