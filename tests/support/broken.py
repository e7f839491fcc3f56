"""Deliberately broken tokens and CSRs, one place for every suite that needs them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ObjectIdentifier

from ca_server.authn.local_issuer import LOCAL_ISSUER
from certs.keys import generate_key, load_private_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sa_claims(ns: str = "demo", sa: str = "frontend", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": LOCAL_ISSUER,
        "sub": f"system:serviceaccount:{ns}:{sa}",
        "aud": ["istio-ca"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


class TokenForge:
    """Signs arbitrary claims with the CA data dir's embedded issuer key (or another key)."""

    def __init__(self, data_dir: Path) -> None:
        key = load_private_key((data_dir / "token-issuer" / "key.pem").read_bytes())
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        jwks = json.loads((data_dir / "token-issuer" / "jwks.json").read_text())
        self.kid = jwks["keys"][0]["kid"]

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        return jwt.encode(
            claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )

    def alg_none(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
        return f"{header}.{_b64(json.dumps(claims).encode())}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic key-confusion attack: HMAC keyed with the RSA public key PEM."""
        secret = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = (
            _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
            + "."
            + _b64(json.dumps(claims).encode())
        )
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    @staticmethod
    def other_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def csr_pem(
    key: Any,
    *,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    ca: bool = False,
    key_cert_sign: bool = False,
    padding_bytes: int = 0,
) -> bytes:
    """A CSR with exactly the SANs and extensions asked for (whatever they are)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns] + [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if key_cert_sign:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    if padding_bytes:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                b"\x04\x82" + padding_bytes.to_bytes(2, "big") + b"A" * padding_bytes,
            ),
            critical=False,
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def truncated_csr(good: bytes) -> bytes:
    der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
    body = base64.encodebytes(der[: len(der) // 2]).decode()
    return (
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    )


def bad_signature_csr(good: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    body = base64.encodebytes(bytes(der)).decode()
    return (
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    )


def rsa_1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def p521() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def good_key() -> Any:
    return generate_key()


# --- keys outside docs/COMPATIBILITY.md §1 that cryptography's generators will not make -----------------


def rsa_with_exponent(exponent: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key whose public exponent is `exponent` (primes borrowed from a fresh key)."""
    import math

    while True:
        base = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
        p, q = base.p, base.q
        lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        if math.gcd(exponent, lam) != 1:
            continue
        d = pow(exponent, -1, lam)
        public = rsa.RSAPublicNumbers(exponent, p * q)
        numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public)
        return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def huge_exponent(bits: int = 2040) -> int:
    """An odd public exponent of exactly `bits` bits."""
    import secrets

    return secrets.randbits(bits) | (1 << (bits - 1)) | 1


def rsa_pss_csr(spiffe_id: str) -> bytes:
    """A CSR whose SubjectPublicKeyInfo is id-RSASSA-PSS (made by the real `openssl req`)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "openssl", "req", "-new", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
                "-nodes", "-keyout", f"{tmp}/key.pem", "-subj", "/O=pss",
                "-addext", f"subjectAltName=critical,URI:{spiffe_id}",
            ],
            capture_output=True, check=True,
        )  # fmt: skip
    return out.stdout


# --- tokens the JWT authenticator must refuse -------------------------------------------


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    """A JWS compact token with any header and claims (an arbitrary signature)."""
    return ".".join(
        _b64(part) for part in (json.dumps(header).encode(), json.dumps(claims).encode(), signature)
    )


def es256_token(kid: str, claims: dict[str, Any], bits: int = 256) -> str:
    """ES256/ES384-signed with a fresh EC key, naming the issuer's RSA key id (alg confusion)."""
    curve: ec.EllipticCurve = ec.SECP256R1() if bits == 256 else ec.SECP384R1()
    alg = "ES256" if bits == 256 else "ES384"
    return jwt.encode(claims, ec.generate_private_key(curve), algorithm=alg, headers={"kid": kid})


def bad_version_csr(good: bytes, version: int = 27) -> bytes:
    """`good` with its CertificationRequestInfo version set to `version` (only 0 is defined):
    cryptography raises InvalidVersion, which is not a ValueError."""
    der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
    at = der.index(b"\x02\x01\x00")
    der = der[:at] + bytes([2, 1, version]) + der[at + 3 :]
    body = base64.encodebytes(der).decode()
    return (
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    )
