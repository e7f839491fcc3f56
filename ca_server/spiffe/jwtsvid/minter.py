"""Minting one JWT-SVID (SPIFFE JWT-SVID spec) and the record entry that stands for it.

Header `alg: ES256`, `kid`, `typ: JWT`; claims `sub` (the caller's SPIFFE ID), `aud`
(the requested audiences), `iat`, `exp` and a random `jti` (the record's serial). The
record keeps the token's SHA-256, never the token.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from ca_server.errors import InvalidRequest
from ca_server.identity import Caller
from ca_server.record.entry import JWT_SVID, IssuedCertificate
from ca_server.spiffe.jwtsvid.keyset import JwtKey, KeyResolver, resolve_pem
from certs import jwt_rules
from certs.errors import InvalidAudience


class BadAudience(InvalidRequest):
    """The request's audiences are missing, too many, too long or not printable ASCII."""


def check_audiences(audiences: Sequence[str]) -> tuple[str, ...]:
    """The audiences, duplicates dropped in order; `BadAudience` saying what is wrong (the
    limit is `certs.jwt_rules`', the agent's too)."""
    try:
        return jwt_rules.check_audiences(audiences)
    except InvalidAudience as exc:
        raise BadAudience(str(exc)) from None


def lifetime(requested_s: int, *, default: timedelta, maximum: timedelta) -> timedelta:
    """The token's lifetime: the default for 0 or less, else the request capped at `maximum`."""
    if requested_s <= 0:
        return default
    if requested_s >= maximum.total_seconds():  # also before timedelta() could overflow
        return maximum
    return timedelta(seconds=requested_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class MintedSvid:
    token: str
    expires_at: datetime
    entry: IssuedCertificate


def mint(
    *,
    key: JwtKey,
    caller: Caller,
    audiences: tuple[str, ...],
    ttl: timedelta,
    now: datetime,
    resolve: KeyResolver = resolve_pem,
) -> MintedSvid:
    """Sign a JWT-SVID for `caller`; `exp` never outlives the key's publication. `resolve`
    gives the key that signs (loaded from PEM, or a handle on a key in the HSM)."""
    issued_at = now.replace(microsecond=0)
    expires = min(issued_at + ttl, key.published_until.replace(microsecond=0))
    # 128 random bits, top bit set: hex without a leading zero, as the record keys serials
    jti = format(secrets.randbits(128) | (1 << 127), "x")
    claims = {
        "sub": str(caller.spiffe_id),
        "aud": list(audiences),
        "iat": int(issued_at.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": jti,
    }
    token = jwt.encode(
        claims, resolve(key), algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"}
    )
    entry = IssuedCertificate(
        serial=jti,
        **caller.record_fields(),
        not_before=issued_at,
        not_after=expires,
        public_key_sha256="",
        csr_sha256="",
        issuer_serial="",
        certificate_pem="",
        kind=JWT_SVID,
        audiences=",".join(audiences),
        token_sha256=hashlib.sha256(token.encode("ascii")).hexdigest(),
        key_id=key.kid,
    )
    return MintedSvid(token=token, expires_at=expires, entry=entry)
