"""Certificate signing requests: building them for workloads, parsing them for the CA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ObjectIdentifier, PublicKeyAlgorithmOID, SignatureAlgorithmOID

from certs.errors import CsrError, UnsupportedKey
from certs.keys import PrivateKey, PublicKey, check_public_key, signature_hash
from certs.spiffe_id import SpiffeId

MAX_CSR_BYTES = 64 * 1024
# SubjectPublicKeyInfo algorithms a CSR may carry (docs/COMPATIBILITY.md §1). An RSA key under the RSA-PSS
# OID (1.2.840.113549.1.1.10) loads as an ordinary RSA key, so the OID is checked itself.
_ALLOWED_SPKI_ALGORITHMS = {
    PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5: "RSA",
    PublicKeyAlgorithmOID.EC_PUBLIC_KEY: "ECDSA",
}
_ED25519_OID = PublicKeyAlgorithmOID.ED25519
# ECDSA signature algorithms of a CSR, with the verification parameters each means.
_ECDSA_SIGNATURES = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.ECDSA(hashes.SHA256()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.ECDSA(hashes.SHA384()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: ec.ECDSA(hashes.SHA512()),
}


def build_csr(key: PrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR with an empty subject and one critical URI SAN, as istio-agent sends."""
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))])
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(san, critical=True)
    csr = builder.sign(key, signature_hash(key))
    return csr.public_bytes(Encoding.PEM)


@dataclass(frozen=True, slots=True)
class ParsedCsr:
    """What the CA needs from a CSR once its signature has been checked."""

    public_key: PublicKey
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    other_sans: tuple[str, ...]
    requests_ca: bool
    sha256: str
    spki: bytes = b""  # DER SubjectPublicKeyInfo of `public_key`


def parse_csr(pem: str | bytes, *, allow_ed25519: bool = False) -> ParsedCsr:
    """Parse and check a PEM CSR; raise `CsrError` (or `UnsupportedKey`) saying what is wrong."""
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise CsrError("CSR is not PEM: expected a 'BEGIN CERTIFICATE REQUEST' block")
    try:
        csr = x509.load_pem_x509_csr(data)
    except (
        ValueError,
        x509.InvalidVersion,
    ) as exc:  # InvalidVersion is no ValueError (found by fuzzing)
        raise CsrError("CSR PEM block does not hold a valid PKCS#10 request") from exc
    algorithm: ObjectIdentifier = csr.public_key_algorithm_oid  # type: ignore[attr-defined]
    _check_spki_algorithm(algorithm, allow_ed25519=allow_ed25519)
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrError("CSR public key cannot be read") from exc
    public_key = check_public_key(public_key, allow_ed25519=allow_ed25519)
    if not _signature_valid(csr, public_key):
        raise CsrError("CSR signature does not verify with its own public key")
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CsrError("CSR extensions cannot be parsed") from exc
    uris: list[str] = []
    dns: list[str] = []
    other: list[str] = []
    requests_ca = False
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            for name in value:
                if isinstance(name, x509.UniformResourceIdentifier):
                    uris.append(name.value)
                elif isinstance(name, x509.DNSName):
                    dns.append(name.value)
                elif isinstance(name, x509.IPAddress):
                    other.append(f"IP:{name.value}")
                else:
                    other.append(f"{type(name).__name__}:{name.value}")
        elif (isinstance(value, x509.BasicConstraints) and value.ca) or (
            isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign)
        ):
            requests_ca = True
    return ParsedCsr(
        public_key=public_key,
        uris=tuple(uris),
        dns_names=tuple(dns),
        other_sans=tuple(other),
        requests_ca=requests_ca,
        sha256=hashlib.sha256(data).hexdigest(),
        spki=public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    )


def _signature_valid(csr: x509.CertificateSigningRequest, key: PublicKey) -> bool:
    """The CSR's proof of possession. An ECDSA signature is checked with the key already
    loaded (`is_signature_valid` would load it again: a tenth of the check's cost); any other
    by cryptography's own check."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or (
        csr.signature_algorithm_oid not in _ECDSA_SIGNATURES
    ):
        return csr.is_signature_valid
    try:
        key.verify(
            csr.signature, csr.tbs_certrequest_bytes, _ECDSA_SIGNATURES[csr.signature_algorithm_oid]
        )
    except InvalidSignature:
        return False
    return True


def _check_spki_algorithm(oid: ObjectIdentifier, *, allow_ed25519: bool) -> None:
    if oid in _ALLOWED_SPKI_ALGORITHMS or (allow_ed25519 and oid == _ED25519_OID):
        return
    if oid == _ED25519_OID:
        raise UnsupportedKey("Ed25519 keys are not enabled on this CA")
    raise UnsupportedKey(
        f"CSR public key algorithm {oid.dotted_string} is not allowed "
        "(use rsaEncryption or id-ecPublicKey: ECDSA P-256/P-384, RSA 2048-8192 with e=65537)"
    )
