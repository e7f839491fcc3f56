"""Key generation, the key allow-list and key serialisation."""

from __future__ import annotations

import enum
import hashlib
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certs.errors import UnsupportedKey

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# docs/COMPATIBILITY.md §1: RSA keys use e = 65537 only. Go refuses e > 2^31-1 and BoringSSL e over 33 bits,
# so a certificate for a larger exponent would be unusable by Envoy and Go peers.
RSA_PUBLIC_EXPONENT = 65537


class KeyType(enum.Enum):
    """Key algorithms Bulwark creates; ECDSA P-256 is the default."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"


def generate_key(kind: KeyType = KeyType.EC_P256) -> PrivateKey:
    """Create a new private key of the given type."""
    if kind is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if kind is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if kind is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    bits = int(kind.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def check_public_key(key: object, *, allow_ed25519: bool = False) -> PublicKey:
    """Return `key` if its algorithm and size are allowed, else raise `UnsupportedKey`."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            return key
        raise UnsupportedKey(f"ECDSA curve {key.curve.name} is not allowed (use P-256 or P-384)")
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise UnsupportedKey(
                f"RSA key of {key.key_size} bits is not allowed (use {MIN_RSA_BITS} to {MAX_RSA_BITS})"
            )
        exponent = key.public_numbers().e
        if exponent != RSA_PUBLIC_EXPONENT:
            raise UnsupportedKey(
                f"RSA public exponent of {exponent.bit_length()} bits is not allowed "
                f"(only {RSA_PUBLIC_EXPONENT})"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        if allow_ed25519:
            return key
        raise UnsupportedKey("Ed25519 keys are not enabled on this CA")
    raise UnsupportedKey(f"key type {type(key).__name__} is not allowed")


def describe_key(key: object) -> str:
    """A short human description such as `ECDSA P-256` or `RSA 2048`."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return {"secp256r1": "ECDSA P-256", "secp384r1": "ECDSA P-384"}.get(
            key.curve.name, f"ECDSA {key.curve.name}"
        )
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "Ed25519"
    return type(key).__name__


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (files holding it are written 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_der(key: PrivateKey) -> bytes:
    """PKCS#8 DER, as the SPIFFE Workload API sends it."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    """Load a PEM private key (PKCS#1, SEC1 or PKCS#8)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(
        key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise UnsupportedKey(f"private key type {type(key).__name__} is not supported")
    return key


def spki_der(key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_pem(key: PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(key: PublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo: the key's fingerprint."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest to sign with: SHA-384 for P-384, none for Ed25519, else SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()
