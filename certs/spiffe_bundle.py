"""The SPIFFE bundle document (SPIFFE Trust Domain and Bundle spec §4), read and written here.

A JWKS: each X.509 authority a key with `use: x509-svid` and its certificate's DER in
`x5c`, each JWT authority a public key with `use: jwt-svid` and a `kid`, plus the optional
`spiffe_sequence` and `spiffe_refresh_hint` (integer seconds). `parse_bundle` turns bytes
into a `SpiffeBundle` or refuses them with `InvalidBundle`, whose `reason` is one of
`REFUSAL_REASONS`; `SpiffeBundle.document()`/`to_json()` write one. The CA (its own bundle,
the federated ones it fetches) and the agent (what the CA hands it) keep only their own
policy on top: which domains, what to keep when a document is refused, sequence order
(`check_successor`).

What is refused, whatever the source: an `x509-svid` authority that is not a CA
certificate; RSA keys under 2048 bits; symmetric (`kty: oct`) keys, and keys carrying
private members (a shared secret or a private key must never be stored or reach
workloads); keys of a type or curve not known here; a key whose `kty` is not its
certificate's. The spec asks clients to skip keys of unknown types; Bulwark refuses the
whole document instead, so that the last good bundle stays in force and the refusal shows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certs.errors import InvalidBundle
from certs.keys import MIN_RSA_BITS

MAX_BUNDLE_BYTES = 1 << 20  # one trust domain's document
X509_SVID, JWT_SVID = "x509-svid", "jwt-svid"
# Why a document was refused: the bounded `reason` label of the CA's and the agent's counters.
REFUSAL_REASONS = (
    "malformed",
    "not_a_ca",
    "weak_key",
    "symmetric_key",
    "private_key",
    "unknown_key_type",
    "sequence_regressed",
)
# JWK curve name -> coordinate size in bytes (RFC 7518 §6.2.1), and the curves' X.509 names.
EC_CURVES: Mapping[str, int] = MappingProxyType({"P-256": 32, "P-384": 48, "P-521": 66})
_X509_CURVES = MappingProxyType({"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"})
# JWK members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpiffeBundle:
    """One trust domain's bundle: X.509 authorities, public JWT keys, sequence, refresh hint."""

    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: tuple[Mapping[str, Any], ...] = ()
    sequence: int | None = None
    refresh_hint: int | None = None  # seconds

    def document(self) -> dict[str, Any]:
        """The bundle as a dict ready for `json.dumps`."""
        keys = [x509_authority(c) for c in self.x509_authorities]
        doc: dict[str, Any] = {"keys": keys + [dict(k) for k in self.jwt_authorities]}
        if self.sequence is not None:
            doc["spiffe_sequence"] = self.sequence
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = self.refresh_hint
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.document(), separators=(",", ":")).encode()

    @property
    def jwks(self) -> bytes:
        """`{"keys": [...]}` with the JWT keys only, canonical JSON (stable bytes per content)."""
        keys = [dict(k) for k in self.jwt_authorities]
        return json.dumps({"keys": keys}, sort_keys=True, separators=(",", ":")).encode()

    def jwt_key(self, kid: str) -> Mapping[str, Any] | None:
        return next((k for k in self.jwt_authorities if k.get("kid") == kid), None)

    @property
    def roots_der(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.DER) for c in self.x509_authorities)

    @property
    def roots_pem(self) -> str:
        return "".join(c.public_bytes(Encoding.PEM).decode() for c in self.x509_authorities)


def x509_authority(cert: x509.Certificate) -> dict[str, Any]:
    """One root as a bundle JWK (`use: x509-svid`, its public key, its DER in `x5c`)."""
    key = cert.public_key()
    jwk: dict[str, Any] = {"use": X509_SVID}
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _X509_CURVES:
        numbers, size = key.public_numbers(), (key.curve.key_size + 7) // 8
        jwk |= {
            "kty": "EC",
            "crv": _X509_CURVES[key.curve.name],
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
    jwk["x5c"] = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")]
    return jwk


def build_bundle(
    *,
    roots: Sequence[x509.Certificate],
    jwt_keys: Sequence[Mapping[str, Any]],
    sequence: int | None,
    refresh_hint: int | None,
) -> SpiffeBundle:
    """A bundle of our own making (every JWT key must be public and carry `use` and `kid`)."""
    return SpiffeBundle(
        x509_authorities=tuple(roots),
        jwt_authorities=tuple(_jwt_authority(dict(k), i) for i, k in enumerate(jwt_keys)),
        sequence=sequence,
        refresh_hint=refresh_hint,
    )


def parse_bundle(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> SpiffeBundle:
    """The bundle in `data`; `InvalidBundle` saying what is wrong (and its `reason`)."""
    if len(data) > max_bytes:
        raise InvalidBundle(f"bundle of {len(data)} bytes is larger than {max_bytes} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidBundle(f"bundle is not JSON ({type(exc).__name__})") from None
    except RecursionError:
        raise InvalidBundle("bundle is not JSON (nested too deeply)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise InvalidBundle("bundle has no `keys` list")
    roots: list[x509.Certificate] = []
    jwt_keys: list[Mapping[str, Any]] = []
    for i, key in enumerate(doc["keys"]):
        if not isinstance(key, dict):
            raise InvalidBundle(f"bundle key {i} is not a JSON object")
        use = key.get("use")
        if use == X509_SVID:
            roots.append(_x509_authority(key, i))
        elif use == JWT_SVID:
            jwt_keys.append(_jwt_authority(key, i))
        else:
            raise InvalidBundle(f"bundle key {i} needs `use` x509-svid or jwt-svid")
    return SpiffeBundle(
        x509_authorities=tuple(roots),
        jwt_authorities=tuple(jwt_keys),
        sequence=_count(doc, "spiffe_sequence", minimum=0),
        refresh_hint=_count(doc, "spiffe_refresh_hint", minimum=0) or None,  # 0: no hint
    )


def check_successor(last: SpiffeBundle | None, new: SpiffeBundle) -> None:
    """`InvalidBundle` (sequence_regressed) if `new` may not replace `last`: its
    `spiffe_sequence` is lower than the last accepted one, or missing where it was set."""
    if last is None or last.sequence is None:
        return
    if new.sequence is None:
        raise InvalidBundle(
            f"spiffe_sequence is missing; the last accepted bundle had {last.sequence}",
            reason="sequence_regressed",
        )
    if new.sequence < last.sequence:
        raise InvalidBundle(
            f"spiffe_sequence {new.sequence} is lower than the last accepted {last.sequence}",
            reason="sequence_regressed",
        )


def _count(doc: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidBundle(f"`{name}` must be an integer of at least {minimum}")
    return value


def _x509_authority(key: Mapping[str, Any], i: int) -> x509.Certificate:
    x5c = key.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
        raise InvalidBundle(f"x509-svid key {i} must have exactly one certificate in `x5c`")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except (ValueError, binascii.Error, x509.InvalidVersion) as exc:
        raise InvalidBundle(f"x509-svid key {i}: its certificate does not parse: {exc}") from None
    what = f"x509-svid authority {i} ({cert.subject.rfc4514_string()[:120] or 'empty subject'})"
    if constraints is None or not constraints.ca:
        raise InvalidBundle(
            f"{what} is not a CA certificate (basicConstraints CA:false or missing)",
            reason="not_a_ca",
        )
    _check_no_private_members(key, what)
    kty = _certificate_kty(cert.public_key(), what)
    if key.get("kty") != kty:
        if key.get("kty") == "oct":
            raise InvalidBundle(f"{what}: symmetric (kty oct) keys are refused", "symmetric_key")
        raise InvalidBundle(f"{what}: kty {_shown(key.get('kty'))} is not its certificate's {kty}")
    return cert


def _certificate_kty(public: object, what: str) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in _X509_CURVES:
            raise InvalidBundle(
                f"{what}: curve {public.curve.name} is not known here", "unknown_key_type"
            )
        return "EC"
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            raise InvalidBundle(
                f"{what}: RSA key of {public.key_size} bits (at least {MIN_RSA_BITS})", "weak_key"
            )
        return "RSA"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "OKP"
    raise InvalidBundle(
        f"{what}: key type {type(public).__name__} is not known here", "unknown_key_type"
    )


def _jwt_authority(key: Mapping[str, Any], i: int) -> Mapping[str, Any]:
    kid = key.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise InvalidBundle(f"jwt-svid key {i} needs a `kid` (a string of 1 to 256 characters)")
    what = f"jwt-svid key {_shown(kid)}"
    kty = key.get("kty")
    if kty == "oct":
        raise InvalidBundle(
            f"{what}: symmetric (kty oct) keys are refused: a shared secret must never be "
            "published to workloads",
            reason="symmetric_key",
        )
    _check_no_private_members(key, what)
    if kty == "EC":
        size = EC_CURVES.get(key.get("crv"))  # type: ignore[arg-type]
        if size is None:
            raise InvalidBundle(
                f"{what}: curve {_shown(key.get('crv'))} is not known here", "unknown_key_type"
            )
        if len(_member(key, "x", what)) != size or len(_member(key, "y", what)) != size:
            raise InvalidBundle(f"{what}: x and y must be {size} bytes for {key['crv']}")
    elif kty == "RSA":
        modulus = int.from_bytes(_member(key, "n", what))
        if modulus.bit_length() < MIN_RSA_BITS:
            raise InvalidBundle(
                f"{what}: RSA key of {modulus.bit_length()} bits (at least {MIN_RSA_BITS})",
                reason="weak_key",
            )
        if not int.from_bytes(_member(key, "e", what)):
            raise InvalidBundle(f"{what}: RSA exponent is zero")
    elif kty == "OKP" and key.get("crv") == "Ed25519":
        if len(_member(key, "x", what)) != 32:
            raise InvalidBundle(f"{what}: an Ed25519 key is 32 bytes")
    else:
        raise InvalidBundle(
            f"{what}: key type {_shown(kty)} is not known here (EC, RSA, OKP Ed25519)",
            reason="unknown_key_type",
        )
    return MappingProxyType(dict(key))


def _check_no_private_members(key: Mapping[str, Any], what: str) -> None:
    present = [m for m in PRIVATE_MEMBERS if m in key]
    if present:
        raise InvalidBundle(
            f"{what} carries private key members ({', '.join(present)}); only public keys "
            "belong in a bundle",
            reason="private_key",
        )


def _member(key: Mapping[str, Any], name: str, what: str) -> bytes:
    value = key.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidBundle(f"{what}: `{name}` is missing")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidBundle(f"{what}: `{name}` is not base64url") from None


def _shown(value: object) -> str:
    """A value of the document, quoted and cut short (it may be anything)."""
    return ascii(value)[:66]
