"""`ValidateJWTSVID`: a JWT-SVID checked against the cached JWT bundles (SPIFFE JWT-SVID spec).

Loaded by the first JWT validation. Written on `cryptography` alone: PyJWT
imports `urllib.request` and with it `ssl`, which `python -m agent` keeps out
of the process (see `agent/__main__.py`), so PyJWT cannot load in the agent.
The checks, each refusing with `InvalidJwt` (INVALID_ARGUMENT): compact JWS
of sane size; header `alg` one of the standard's list and matching the key's
type and curve, `kid` present, `typ` JWT or JOSE if present, no `crit`
(`certs.jwt_rules`: we understand no JOSE extension); `sub` a SPIFFE ID whose
trust domain the agent holds a bundle for (own or federated); the signature by
that bundle's key `kid`; `exp`, `nbf` and `iat` integer seconds when present
(NaN, Infinity, fractions, strings refused), `exp` present and not passed,
`nbf` if present reached; `aud` present and holding the given audience.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.errors import AgentError
from agent.logs import printable
from agent.state.trust_bundles import TrustBundles
from certs.errors import InvalidSpiffeId, JwtError
from certs.jwt_rules import check_crit, numeric_date
from certs.keys import MIN_RSA_BITS
from certs.spiffe_id import SpiffeId

MAX_TOKEN_BYTES = 16 * 1024
# alg -> (JWK kty, JWK crv or None, hash, padding kind): the JWT-SVID spec's list; never none/HS*.
ALGORITHMS: Mapping[str, tuple[str, str | None, type[hashes.HashAlgorithm], str]] = {
    "ES256": ("EC", "P-256", hashes.SHA256, "ecdsa"),
    "ES384": ("EC", "P-384", hashes.SHA384, "ecdsa"),
    "RS256": ("RSA", None, hashes.SHA256, "pkcs1"),
    "RS384": ("RSA", None, hashes.SHA384, "pkcs1"),
    "RS512": ("RSA", None, hashes.SHA512, "pkcs1"),
    "PS256": ("RSA", None, hashes.SHA256, "pss"),
    "PS384": ("RSA", None, hashes.SHA384, "pss"),
    "PS512": ("RSA", None, hashes.SHA512, "pss"),
}
_CURVES: Mapping[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
}


class InvalidJwt(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


def validate_jwt_svid(
    token: str, audience: str, bundles: TrustBundles, *, now: float | None = None
) -> tuple[SpiffeId, dict[str, Any]]:
    """The token's SPIFFE ID and claims, or `InvalidJwt` naming the first check it failed."""
    if not audience:
        raise InvalidJwt("audience is required")
    if not token:
        raise InvalidJwt("svid is required: the JWT-SVID to validate")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidJwt(f"JWT-SVID is longer than {MAX_TOKEN_BYTES} bytes")
    header, claims, signed, signature = _split(token)
    alg = _check_header(header)
    subject = _subject(claims)
    domain = bundles.for_trust_domain(subject.trust_domain.name)
    if domain is None:
        raise InvalidJwt(f"no bundle for trust domain {subject.trust_domain.name!r}")
    jwk = domain.jwt_key(header["kid"])
    if jwk is None:
        raise InvalidJwt(
            f"key {printable(header['kid'])!r} is not in the bundle of {subject.trust_domain.name}"
        )
    _verify(alg, jwk, signed, signature)
    _check_claims(claims, audience, time.time() if now is None else now)
    return subject, claims


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidJwt("not a JWT: a compact JWS has three dot-separated parts")
    try:
        header = json.loads(_b64(parts[0]))
        claims = json.loads(_b64(parts[1]))
        signature = _b64(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJwt(f"not a JWT: {printable(str(exc))}") from None
    except RecursionError:
        raise InvalidJwt("not a JWT: JSON nested too deeply") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidJwt("not a JWT: header and claims must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _b64(part: str) -> bytes:
    if not part.isascii():
        raise ValueError("non-ASCII characters in base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error as exc:
        raise ValueError(f"bad base64url: {exc}") from None


def _check_header(header: Mapping[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        shown = printable(str(alg))
        raise InvalidJwt(
            f"alg {shown!r} is not allowed for JWT-SVIDs (use {', '.join(ALGORITHMS)})"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidJwt("the JWT header has no 'kid'")
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise InvalidJwt(f"typ {printable(str(typ))!r} is not JWT or JOSE")
    try:
        check_crit(header)
    except JwtError as exc:
        raise InvalidJwt(printable(str(exc))) from None
    return alg


def _subject(claims: Mapping[str, Any]) -> SpiffeId:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidJwt("the JWT has no 'sub' claim")
    try:
        return SpiffeId.parse(sub)
    except InvalidSpiffeId as exc:
        raise InvalidJwt(f"sub is not a SPIFFE ID: {exc}") from None


def _verify(alg: str, jwk: Mapping[str, Any], signed: bytes, signature: bytes) -> None:
    kty, crv, hash_type, kind = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise InvalidJwt(
            f"alg {alg} does not match key {printable(str(jwk.get('kid')))!r} "
            f"({jwk.get('kty')} {jwk.get('crv') or ''})".rstrip()
        )
    key = _public_key(jwk)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = _CURVES[str(crv)][1]
            if len(signature) != 2 * size:
                raise InvalidSignature
            r, s = int.from_bytes(signature[:size]), int.from_bytes(signature[size:])
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hash_type()))
        elif kind == "pss":
            pss = padding.PSS(mgf=padding.MGF1(hash_type()), salt_length=padding.PSS.DIGEST_LENGTH)
            key.verify(signature, signed, pss, hash_type())
        else:
            key.verify(signature, signed, padding.PKCS1v15(), hash_type())
    except InvalidSignature:
        raise InvalidJwt("the JWT-SVID's signature does not verify") from None


def _public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    try:
        if jwk["kty"] == "EC":
            curve, _ = _CURVES[jwk["crv"]]
            x, y = (int.from_bytes(_b64(jwk[c])) for c in ("x", "y"))
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        n, e = (int.from_bytes(_b64(jwk[c])) for c in ("n", "e"))
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA key under {MIN_RSA_BITS} bits")
        return rsa.RSAPublicNumbers(e, n).public_key()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidJwt(f"the bundle's key cannot be used: {printable(str(exc))}") from None


def _check_claims(claims: Mapping[str, Any], audience: str, now: float) -> None:
    try:
        exp, nbf, _iat = (numeric_date(claims, name) for name in ("exp", "nbf", "iat"))
    except JwtError as exc:
        raise InvalidJwt(f"the JWT-SVID's {exc}") from None
    if exp is None:
        raise InvalidJwt("the JWT-SVID has no numeric 'exp' claim")
    if now >= exp:
        raise InvalidJwt("the JWT-SVID has expired (exp is past)")
    if nbf is not None and now < nbf:
        raise InvalidJwt("the JWT-SVID is not valid yet (nbf)")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not audiences:
        raise InvalidJwt("the JWT-SVID has no 'aud' claim")
    if audience not in audiences:
        raise InvalidJwt(f"the JWT-SVID's aud does not include {printable(audience)!r}")
