"""The one builder of this CA's SPIFFE trust bundle (SPIFFE Trust Domain and Bundle spec).

A JWKS: each X.509 root as a key with `use: x509-svid` and its DER in `x5c`, each
published JWT-SVID key with `use: jwt-svid` and its `kid`, plus `spiffe_sequence`
(bumped by the supervisor whenever the contents change, kept in the JWT key file so all
processes and restarts agree) and `spiffe_refresh_hint` (seconds). The workers'
`FetchTrustBundles`, the admin API's `/v1/trust-bundle?format=spiffe` and the bundle
endpoint all serve `BundleSource.document()`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca_server.spiffe.jwtsvid.keyset import JwtKey, KeyFile, KeySet, bundle_digest, published
from certs.pem import sha256_fingerprint

Clock = Callable[[], datetime]
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big")


def x509_authority(cert: x509.Certificate) -> dict[str, Any]:
    """One root as a bundle JWK (`use: x509-svid`, the certificate's DER in `x5c`)."""
    der = base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")
    key = cert.public_key()
    jwk: dict[str, Any] = {"use": "x509-svid"}
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers, size = key.public_numbers(), (key.curve.key_size + 7) // 8
        jwk |= {
            "kty": "EC",
            "crv": _CURVES[key.curve.name],
            "x": _b64url(_int_bytes(numbers.x, size)),
            "y": _b64url(_int_bytes(numbers.y, size)),
        }
    elif isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        jwk |= {
            "kty": "RSA",
            "n": _b64url(_int_bytes(rsa_numbers.n)),
            "e": _b64url(_int_bytes(rsa_numbers.e)),
        }
    elif isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        jwk |= {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    else:
        raise ValueError(f"root key type {type(key).__name__} has no JWK form here")
    jwk["x5c"] = [der]
    return jwk


def build_bundle(
    *,
    roots: Sequence[x509.Certificate],
    jwt_keys: Sequence[JwtKey],
    sequence: int,
    refresh_hint: timedelta,
) -> dict[str, Any]:
    """The bundle document, as a dict ready for `json.dumps`."""
    return {
        "keys": [x509_authority(r) for r in roots] + [k.public_jwk() for k in jwt_keys],
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": max(1, int(refresh_hint.total_seconds())),
    }


def contents_digest(roots: Sequence[x509.Certificate], keyset: KeySet, now: datetime) -> str:
    """What `spiffe_sequence` tracks: the roots and the JWT keys published at `now`."""
    return bundle_digest((sha256_fingerprint(r) for r in roots), published(keyset.keys, now))


class BundleSource:
    """This CA's bundle from its current roots and the shared JWT key file."""

    def __init__(
        self,
        *,
        roots: Callable[[], Sequence[x509.Certificate]],
        key_file: KeyFile,
        refresh_hint: timedelta,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._roots = roots
        self._key_file = key_file
        self._refresh_hint = refresh_hint
        self._clock = clock

    def document(self) -> dict[str, Any]:
        keyset = self._key_file.load()
        return build_bundle(
            roots=self._roots(),
            jwt_keys=published(keyset.keys, self._clock()),
            sequence=keyset.sequence,
            refresh_hint=self._refresh_hint,
        )

    def json_bytes(self) -> bytes:
        return json.dumps(self.document(), separators=(",", ":")).encode()
