"""The JWT-SVID signing keys of one CA: their timeline, the rotation decision and the key file.

Each key carries its own timeline, so every process agrees on which key signs without
talking to the others:

    prepared   now < active_from            published in the bundle, signs nothing yet
    active     active_from <= now < active_until   the newest such key signs
    retired    active_until <= now < published_until   published until its last token expired

`plan` is the one decision (pure, clock passed in): drop keys past `published_until`,
start a key at once when none is active, and prepare the next key (active from the
current one's `active_until`) once the current one is past half its active life, so the
next key is in the bundle for at least half a life before it signs.

The supervisor runs `plan` and writes the result with `KeyFile.save` (atomic rename,
0600, in the 0700 directory `<data-dir>/jwt-svid`); workers only read the file
(`KeyFile.load`, cached on the file's identity), so no key crosses a pipe.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_server.config import CaConfig
from certs.files import write_atomic
from certs.keys import KeyType, generate_key, load_private_key, private_key_pem

KEY_FILE_NAME = "keys.json"
HSM_PREFIX = b"pkcs11:"
FORMAT_VERSION = 1
KeyState = Literal["prepared", "active", "retired"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKeyPolicy:
    """How the JWT-SVID keys rotate: how long a key signs and how long its tokens may live
    (bounds its publication)."""

    active_life: timedelta
    max_token_ttl: timedelta

    def __post_init__(self) -> None:
        if self.active_life <= timedelta(0) or self.max_token_ttl <= timedelta(0):
            raise ValueError("JWT key active life and token TTL must be positive")

    @property
    def refresh_hint(self) -> timedelta:
        """How often relying parties should re-fetch: well inside the prepare lead time."""
        return max(timedelta(seconds=1), min(timedelta(minutes=5), self.active_life / 4))


def key_policy(config: CaConfig) -> JwtKeyPolicy:
    """The policy of `bulwark ca serve`: --jwt-key-active-life, published for
    --jwt-svid-max-ttl after a key's last signature."""
    return JwtKeyPolicy(
        active_life=config.jwt_key_active_life, max_token_ttl=config.jwt_svid_max_ttl
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKey:
    """One ES256 signing key and its timeline. `private_pem` is never logged or served; for
    a key made inside an HSM (`--jwt-keys-in-hsm`) it is the key's `pkcs11:` URI instead, and
    `public_pem` holds the public half."""

    kid: str
    private_pem: bytes = field(repr=False)
    active_from: datetime
    active_until: datetime
    published_until: datetime
    public_pem: bytes = b""

    def state(self, now: datetime) -> KeyState:
        if now < self.active_from:
            return "prepared"
        return "active" if now < self.active_until else "retired"

    @property
    def in_hsm(self) -> bool:
        return self.private_pem.startswith(HSM_PREFIX)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key of a PEM entry (an HSM entry is resolved by the process's `KeyResolver`)."""
        if self.in_hsm:
            raise ValueError(f"JWT key {self.kid} is in an HSM: this process has no session")
        key = load_private_key(self.private_pem)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(f"JWT key {self.kid} is not an EC P-256 key")
        return key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        if not self.public_pem:
            return self.private_key().public_key()
        key = serialization.load_pem_public_key(self.public_pem)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError(f"JWT key {self.kid} is not an EC P-256 key")
        return key

    def public_jwk(self) -> dict[str, str]:
        """The key as a SPIFFE bundle JWK (`use: jwt-svid`)."""
        numbers = self.public_key().public_numbers()
        return {
            "use": "jwt-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "kid": self.kid,
        }


# Turns a key-file entry into the key that signs: PEM entries load, HSM entries go through the
# process's own session (`ca_server.authority.custody.HsmCustody.jwt_key`).
KeyResolver = Callable[[JwtKey], ec.EllipticCurvePrivateKey]


def resolve_pem(key: JwtKey) -> ec.EllipticCurvePrivateKey:
    return key.private_key()


def new_key(active_from: datetime, policy: JwtKeyPolicy) -> JwtKey:
    """A fresh P-256 key with a random `kid`, signing from `active_from` for one active life."""
    until = active_from + policy.active_life
    return JwtKey(
        kid=_b64url(secrets.token_bytes(16)),
        private_pem=private_key_pem(generate_key(KeyType.EC_P256)),
        active_from=active_from,
        active_until=until,
        published_until=until + policy.max_token_ttl,
    )


def signing_key(keys: Iterable[JwtKey], now: datetime) -> JwtKey | None:
    """The key that signs at `now`: the newest active one."""
    active = [k for k in keys if k.state(now) == "active"]
    return max(active, key=lambda k: k.active_from) if active else None


def published(keys: Iterable[JwtKey], now: datetime) -> tuple[JwtKey, ...]:
    """The keys a bundle carries at `now` (prepared, active and retired-but-unexpired)."""
    return tuple(k for k in keys if now < k.published_until)


def plan(
    keys: Iterable[JwtKey],
    now: datetime,
    policy: JwtKeyPolicy,
    make: Callable[[datetime, JwtKeyPolicy], JwtKey] = new_key,
) -> tuple[JwtKey, ...]:
    """The keys to keep after `now`: expired ones dropped, an active and a prepared one made."""
    kept = list(published(keys, now))
    if signing_key(kept, now) is None:
        kept.append(make(now, policy))  # nothing signs (first start, or down too long)
    latest = max(kept, key=lambda k: k.active_until)
    if latest.state(now) == "active" and now >= latest.active_from + policy.active_life / 2:
        kept.append(make(latest.active_until, policy))
    return tuple(kept)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySet:
    """What the key file holds: the keys and the bundle's `spiffe_sequence` bookkeeping."""

    keys: tuple[JwtKey, ...] = ()
    sequence: int = 0  # bumped each time the published bundle's contents change
    bundle_digest: str = ""  # of the contents `sequence` was last bumped for

    def with_bundle(self, digest: str) -> KeySet:
        """This set with `sequence` bumped when the bundle contents (`digest`) changed."""
        if digest == self.bundle_digest:
            return self
        return replace(self, sequence=self.sequence + 1, bundle_digest=digest)


def bundle_digest(root_fingerprints: Iterable[str], keys: Iterable[JwtKey]) -> str:
    """Digest of what a bundle publishes: the roots and the published key ids."""
    parts = [*sorted(root_fingerprints), "|", *sorted(k.kid for k in keys)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _stamp(t: datetime) -> float:
    return t.timestamp()


def _time(v: Any) -> datetime:
    return datetime.fromtimestamp(float(v), UTC)


def encode(keyset: KeySet) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "sequence": keyset.sequence,
        "bundle_digest": keyset.bundle_digest,
        "keys": [_entry(k) for k in keyset.keys],
    }
    return json.dumps(doc, indent=1).encode()


def _entry(k: JwtKey) -> dict[str, object]:
    where = (
        {"private_key_uri": k.private_pem.decode("ascii"), "public_key_pem": k.public_pem.decode()}
        if k.in_hsm
        else {"private_key_pem": k.private_pem.decode("ascii")}
    )
    return {
        "kid": k.kid,
        **where,
        "active_from": _stamp(k.active_from),
        "active_until": _stamp(k.active_until),
        "published_until": _stamp(k.published_until),
    }


def decode(data: bytes) -> KeySet:
    """The key set of a key file; ValueError (never the key text) when it is malformed."""
    try:
        doc = json.loads(data)
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown key file version {doc.get('version')!r}")
        keys = tuple(
            JwtKey(
                kid=str(k["kid"]),
                private_pem=str(k.get("private_key_pem") or k["private_key_uri"]).encode("ascii"),
                public_pem=str(k.get("public_key_pem", "")).encode("ascii"),
                active_from=_time(k["active_from"]),
                active_until=_time(k["active_until"]),
                published_until=_time(k["published_until"]),
            )
            for k in doc["keys"]
        )
        return KeySet(
            keys=keys, sequence=int(doc["sequence"]), bundle_digest=str(doc["bundle_digest"])
        )
    except (KeyError, TypeError, AttributeError, UnicodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed JWT key file ({type(exc).__name__})") from None


class KeyFile:
    """`<dir>/keys.json`: written by the supervisor only, read by everyone, cached on identity."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / KEY_FILE_NAME
        self._seen: tuple[int, int, int] | None = None
        self._cached = KeySet()

    def load(self) -> KeySet:
        """The current key set (empty when the file does not exist yet)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return KeySet()
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if identity != self._seen:
            self._cached = decode(self.path.read_bytes())
            self._seen = identity
        return self._cached

    def save(self, keyset: KeySet) -> None:
        write_atomic(self.path, encode(keyset), mode=0o600)
