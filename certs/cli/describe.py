"""JSON-ready descriptions of certificates and CSRs for `bulwark inspect`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.keys import describe_key
from certs.pem import serial_hex, sha256_fingerprint

_KU_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def _ext(exts: x509.Extensions, kind: type[x509.ExtensionType]) -> Any:
    try:
        return exts.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def key_usage(exts: x509.Extensions) -> list[str]:
    found = _ext(exts, x509.KeyUsage)
    if found is None:
        return []
    usage = found.value
    names = [_camel(f) for f in _KU_FLAGS if getattr(usage, f)]
    if usage.key_agreement:
        names += [
            n
            for n, f in (("encipherOnly", "encipher_only"), ("decipherOnly", "decipher_only"))
            if getattr(usage, f)
        ]
    return names + (["(critical)"] if found.critical else [])


def extended_key_usage(exts: x509.Extensions) -> list[str]:
    found = _ext(exts, x509.ExtendedKeyUsage)
    if found is None:
        return []
    return [_EKU_NAMES.get(oid, oid.dotted_string) for oid in found.value]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _sans(exts: x509.Extensions) -> tuple[list[str], list[str], list[str]]:
    found = _ext(exts, x509.SubjectAlternativeName)
    if found is None:
        return [], [], []
    san = found.value
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
        ips,
    )


def _signature_algorithm(obj: x509.Certificate | x509.CertificateSigningRequest) -> str:
    oid = obj.signature_algorithm_oid
    return getattr(oid, "_name", None) or oid.dotted_string


def certificate(cert: x509.Certificate, position: str, now: datetime) -> dict[str, Any]:
    exts = cert.extensions
    uris, dns, ips = _sans(exts)
    basic = _ext(exts, x509.BasicConstraints)
    aki = _ext(exts, x509.AuthorityKeyIdentifier)
    ski = _ext(exts, x509.SubjectKeyIdentifier)
    left = cert.not_valid_after_utc - now
    return {
        "kind": "certificate",
        "position": position,
        "spiffe_id": uris[0] if len(uris) == 1 else None,
        "uri_sans": uris,
        "dns_sans": dns,
        "ip_sans": ips,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "seconds_left": int(left.total_seconds()),
        "key": describe_key(cert.public_key()),
        "signature_algorithm": _signature_algorithm(cert),
        "ca": bool(basic and basic.value.ca),
        "key_usage": key_usage(exts),
        "extended_key_usage": extended_key_usage(exts),
        "subject_key_id": ski.value.digest.hex(":") if ski else None,
        "authority_key_id": aki.value.key_identifier.hex(":")
        if aki and aki.value.key_identifier
        else None,
        "sha256": sha256_fingerprint(cert),
    }


def csr(request: x509.CertificateSigningRequest) -> dict[str, Any]:
    exts = request.extensions
    uris, dns, ips = _sans(exts)
    return {
        "kind": "csr",
        "spiffe_id": uris[0] if len(uris) == 1 else None,
        "uri_sans": uris,
        "dns_sans": dns,
        "ip_sans": ips,
        "subject": request.subject.rfc4514_string(),
        "key": describe_key(request.public_key()),
        "signature_algorithm": _signature_algorithm(request),
        "signature_valid": request.is_signature_valid,
        "key_usage": key_usage(exts),
        "extended_key_usage": extended_key_usage(exts),
    }


def positions(chain: list[x509.Certificate]) -> list[str]:
    out = []
    for i, cert in enumerate(chain):
        if i == 0:
            out.append("leaf")
        elif cert.issuer == cert.subject:
            out.append(f"root ({i})")
        else:
            out.append(f"intermediate ({i})")
    return out
