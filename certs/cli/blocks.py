"""Read what a user hands `bulwark inspect`: PEM blocks or one DER object, certificates or CSRs.

Every block is numbered (1-based, with its first line) so a parse failure names which one;
text between blocks that is not whitespace is reported, never silently skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cryptography import x509

from certs.errors import CertsError

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
CERT_LABELS = ("CERTIFICATE", "TRUSTED CERTIFICATE")
CSR_LABELS = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")


class InputError(CertsError):
    """The input holds nothing usable; the message says which block and why."""


@dataclass(slots=True)
class Contents:
    """What one input held, in order, plus what was wrong with it."""

    certificates: list[x509.Certificate] = field(default_factory=list)
    csrs: list[x509.CertificateSigningRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    encoding: str = "PEM"


def read(data: bytes, what: str) -> Contents:
    """Certificates and CSRs in `data` (PEM, or a single DER object); `InputError` if none."""
    if b"-----BEGIN " not in data:
        return _read_der(data, what)
    out = Contents()
    pos = 0
    for number, match in enumerate(_BLOCK.finditer(data), start=1):
        _note_junk(out, data, pos, match.start(), what)
        pos = match.end()
        label = match.group(1).decode()
        line = data.count(b"\n", 0, match.start()) + 1
        where = f"{what}: block {number} ({label}, line {line})"
        _parse_block(out, label, match.group(0), where)
    _note_junk(out, data, pos, len(data), what)
    if not out.certificates and not out.csrs:
        problems = "; ".join(out.warnings) or "no complete BEGIN/END block"
        raise InputError(f"{what} holds no certificate or CSR: {problems}")
    return out


def _parse_block(out: Contents, label: str, pem: bytes, where: str) -> None:
    try:
        if label in CERT_LABELS:
            out.certificates.append(x509.load_pem_x509_certificate(pem))
        elif label in CSR_LABELS:
            out.csrs.append(x509.load_pem_x509_csr(pem))
        else:
            kind = "private key: not shown" if "PRIVATE KEY" in label else "not inspected"
            out.warnings.append(f"{where}: skipped ({kind})")
    except ValueError as exc:
        raise InputError(f"{where} cannot be parsed: {_reason(exc)}") from None


def _note_junk(out: Contents, data: bytes, start: int, end: int, what: str) -> None:
    segment = data[start:end]
    junk = segment.strip()
    if not junk:
        return
    first = start + len(segment) - len(segment.lstrip())
    line = data.count(b"\n", 0, first) + 1
    sample = junk[:40].decode(errors="replace").splitlines()[0]
    out.warnings.append(
        f"{what}: line {line}: {len(junk)} byte(s) outside any PEM block ({sample!r})"
    )


def _read_der(data: bytes, what: str) -> Contents:
    if not data.strip():
        raise InputError(f"{what} is empty")
    try:
        return Contents(certificates=[x509.load_der_x509_certificate(data)], encoding="DER")
    except ValueError:
        pass
    try:
        return Contents(csrs=[x509.load_der_x509_csr(data)], encoding="DER")
    except ValueError:
        pass
    raise InputError(
        f"{what} holds no 'BEGIN CERTIFICATE' block and is not a DER certificate or CSR either"
    )


def _reason(exc: ValueError) -> str:
    text = str(exc).split("\n")[0]
    return text or "malformed DER inside the block"
