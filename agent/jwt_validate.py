"""`ValidateJWTSVID`: a JWT-SVID checked against the cached JWT bundles (SPIFFE JWT-SVID spec).

Loaded by the first JWT validation (PyJWT and its algorithms stay out of an
agent that only serves X.509). The checks, each refusing with `InvalidJwt`
(INVALID_ARGUMENT): compact JWS of sane size; header `alg` one of the
standard's list and matching the key's type and curve, `kid` present, `typ`
JWT or JOSE if present; `sub` a SPIFFE ID whose trust domain the agent holds
a bundle for (own or federated); the signature by that bundle's key `kid`;
`exp` present and not passed; `aud` present and holding the given audience.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import jwt

from agent.errors import AgentError
from agent.logs import printable
from agent.trust_bundles import TrustBundles
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId

MAX_TOKEN_BYTES = 16 * 1024
# alg -> (JWK kty, JWK crv or None): the JWT-SVID spec's list; never `none` or HS*.
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
}


class InvalidJwt(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


def validate_jwt_svid(
    token: str, audience: str, bundles: TrustBundles
) -> tuple[SpiffeId, dict[str, Any]]:
    """The token's SPIFFE ID and claims, or `InvalidJwt` naming the first check it failed."""
    if not audience:
        raise InvalidJwt("audience is required")
    if not token:
        raise InvalidJwt("svid is required: the JWT-SVID to validate")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidJwt(f"JWT-SVID is longer than {MAX_TOKEN_BYTES} bytes")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidJwt(f"not a JWT: {exc}") from None
    alg = _check_header(header)
    subject = _subject(unverified)
    domain = bundles.for_trust_domain(subject.trust_domain.name)
    if domain is None:
        raise InvalidJwt(f"no bundle for trust domain {subject.trust_domain.name!r}")
    jwk = domain.jwt_key(header["kid"])
    if jwk is None:
        raise InvalidJwt(
            f"key {printable(header['kid'])!r} is not in the bundle of {subject.trust_domain.name}"
        )
    key = _public_key(jwk, alg)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            options={"require": ["exp", "aud", "sub"]},
        )
    except jwt.InvalidAudienceError:
        raise InvalidJwt(f"the JWT-SVID's aud does not include {printable(audience)!r}") from None
    except jwt.ExpiredSignatureError:
        raise InvalidJwt("the JWT-SVID has expired (exp is past)") from None
    except jwt.PyJWTError as exc:
        raise InvalidJwt(f"JWT-SVID refused: {printable(str(exc))}") from None
    return subject, claims


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
    return alg


def _subject(claims: Mapping[str, Any]) -> SpiffeId:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidJwt("the JWT has no 'sub' claim")
    try:
        return SpiffeId.parse(sub)
    except InvalidSpiffeId as exc:
        raise InvalidJwt(f"sub is not a SPIFFE ID: {exc}") from None


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise InvalidJwt(
            f"alg {alg} does not match key {printable(str(jwk.get('kid')))!r} "
            f"({jwk.get('kty')} {jwk.get('crv') or ''})".rstrip()
        )
    try:
        return jwt.PyJWK(dict(jwk), algorithm=alg).key
    except jwt.PyJWTError as exc:
        raise InvalidJwt(f"the bundle's key cannot be used: {exc}") from None
