"""The JWT authenticator: a Kubernetes service-account token (or an OIDC issuer's) checked
against the issuer's keys, in the order istiod's JwtAuthenticator checks it, with verified
tokens cached for at most `--token-cache-ttl` (docs/COMPATIBILITY.md §1)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ca_server.authn.authenticators import (
    IdentityExtractionError,
    split_service_account,
    with_request,
    workload_identity,
)
from ca_server.authn.jwks import JwksSource, UnknownKeyId
from ca_server.errors import AuthenticationError
from ca_server.identity import Caller, RequestCredentials, shown
from ca_server.options import default
from certs.errors import JwtError
from certs.jwt_rules import (
    check_crit,
    expired_words,
    not_yet_valid_words,
    numeric_date,
    unverified_claims,
    unverified_header,
)
from certs.spiffe_id import TrustDomain
from certs.values import exact_duration

# the logger these lines had before the module was split (operators filter on it)
log = logging.getLogger("ca_server.authn.authenticators")

# --token-clock-skew and --max-token-lifetime (ca_server.options says why these defaults).
DEFAULT_LEEWAY_S = default("token_clock_skew").total_seconds()
DEFAULT_MAX_TOKEN_LIFETIME_S = default("max_token_lifetime").total_seconds()
# A verified token is trusted from the cache at most this long, whatever its `exp` says.
DEFAULT_CACHE_SECONDS = 300.0
MAX_TOKEN_CHARS = 16 * 1024

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVE_OF_ALG: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


def key_fits_algorithm(key: jwt.PyJWK, alg: str) -> bool:
    """Whether a token signed with `alg` may be checked with `key`: the key's type (and
    curve) must be the algorithm's, and the JWK's own `alg`, when it states one, must be `alg`
    (a PS256 token is not checked with a key published for RS256)."""
    stated = key._jwk_data.get("alg")  # PyJWK fills `algorithm_name` in when absent
    if stated is not None and stated != alg:
        return False
    public = key.key
    if alg in _RSA_ALGS:
        return isinstance(public, rsa.RSAPublicKey)
    if alg in _EC_CURVE_OF_ALG:
        return isinstance(public, ec.EllipticCurvePublicKey) and isinstance(
            public.curve, _EC_CURVE_OF_ALG[alg]
        )
    if alg == "EdDSA":
        return isinstance(public, ed25519.Ed25519PublicKey)
    return False


def check_dates(token: str) -> None:
    """`exp`/`nbf`/`iat` whole seconds (`certs.jwt_rules`), checked before the signature:
    PyJWT turns a NaN or Infinity date into "malformed", and takes "123" or `true` as numbers."""
    try:
        claims = unverified_claims(token)
        for name in ("exp", "nbf", "iat"):
            numeric_date(claims, name)
    except JwtError as exc:
        raise AuthenticationError(f"token {exc}") from None


class JwtAuthenticator:
    """OIDC/JWKS service-account tokens: signature with a key of the token's algorithm, `iss`,
    `aud` overlap, numeric `exp`/`nbf`/`iat` within a clock-skew leeway, a bounded lifetime,
    and a Kubernetes service-account `sub`. Verified tokens are cached for a bounded time."""

    name = "jwt"

    def __init__(
        self,
        *,
        keys: JwksSource,
        issuer: str,
        audiences: Sequence[str],
        algorithms: Sequence[str],
        trust_domain: TrustDomain,
        cache_size: int = 20_000,
        leeway_s: float = DEFAULT_LEEWAY_S,
        max_lifetime_s: float = DEFAULT_MAX_TOKEN_LIFETIME_S,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        unknown_key_hint: str = "",
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._unknown_key_hint = unknown_key_hint  # the likely cause, for this issuer
        self._audiences = list(audiences)
        self._algorithms = list(algorithms)
        self._trust_domain = trust_domain
        self._cache: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._leeway = leeway_s
        self._max_lifetime = max_lifetime_s
        self._cache_seconds = cache_seconds
        self._clock = clock

    def load(self) -> None:
        """A key file is read now and kept; an OIDC issuer's keys are fetched on first need
        (the supervisor waits for them before it says it is ready)."""
        if not self._keys.remote:
            self._keys.load()

    def authenticate(self, creds: RequestCredentials) -> Caller | None:
        token = creds.bearer_token
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cached(digest)
        if cached is not None:
            return with_request(cached, creds)
        caller = self._verify(token, creds)
        until = self._clock() + self._cache_seconds
        if caller.expires_at is not None:
            until = min(until, caller.expires_at)
        with self._cache_lock:
            self._cache[digest] = (caller, until)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return caller

    def may_block(self, creds: RequestCredentials) -> bool:
        """A token not verified before may need the issuer's keys fetched over the network."""
        token = creds.bearer_token
        if not token or not self._keys.remote:
            return False
        return self._cached(hashlib.sha256(token.encode()).digest()) is None

    def _cached(self, digest: bytes) -> Caller | None:
        with self._cache_lock:
            entry = self._cache.get(digest)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return entry[0]

    def _verify(self, token: str, creds: RequestCredentials) -> Caller:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError(f"bearer token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            jose_header = unverified_header(token)
        except JwtError:
            raise AuthenticationError("bearer token is not a JWT") from None
        try:
            check_crit(jose_header)  # before PyJWT reads the header: it knows `b64`, we do not
        except JwtError as exc:
            raise AuthenticationError(f"token refused: {exc}") from None
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthenticationError("bearer token is not a JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthenticationError(
                f"token algorithm {shown(alg)} is not allowed (allowed: {', '.join(self._algorithms)})"
            )
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("token key id ('kid') must be a string")
        check_dates(token)
        claims = self._decode(token, kid, alg)
        expires_at = self._check_lifetime(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise IdentityExtractionError("token subject ('sub') must be a string")
        namespace, account = split_service_account(subject)
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, dict) else None
        pod = pod if isinstance(pod, dict) else {}
        return Caller(
            spiffe_id=workload_identity(self._trust_domain, namespace, account),
            namespace=namespace,
            service_account=account,
            authenticator=self.name,
            subject=subject,
            pod_name=_text(pod.get("name")),
            pod_uid=_text(pod.get("uid")),
            cluster_id=creds.cluster_id,
            peer=creds.peer,
            expires_at=expires_at,
        )

    def _unknown_key(self, token: str, kid: str | None) -> str:
        """Why a `kid` is unknown, naming the issuer the token claims (unverified) against
        the one this CA trusts."""
        try:
            claimed = unverified_claims(token).get("iss")
        except JwtError:
            claimed = None
        if claimed != self._issuer:
            return (
                f"token key id {shown(kid)} is not a key of the issuer this CA trusts "
                f"({self._issuer!r}); the token names issuer {shown(claimed)}"
            )
        return (  # the token names our own issuer: its name is ours, not the caller's text
            f"token key id {shown(kid)} is not among the signing keys of its issuer "
            f"{self._issuer!r}{self._unknown_key_hint}"
        )

    def _check_lifetime(self, claims: dict[str, Any]) -> int:
        """`exp`, after checking every date is numeric and the lifetime within the maximum."""
        try:
            exp, iat, nbf = (numeric_date(claims, name) for name in ("exp", "iat", "nbf"))
        except JwtError as exc:  # checked by `check_form` already; the signed claims again
            raise AuthenticationError(f"token {exc}") from None
        assert exp is not None  # required by decode
        now = self._clock()
        start = min(now, iat if iat is not None else nbf if nbf is not None else now)
        if exp - start > self._max_lifetime:
            raise AuthenticationError(
                f"token lifetime exceeds the maximum this CA accepts ({int(self._max_lifetime)}s):"
                f" the token's is {exact_duration(int(exp - start))}, the CA's --max-token-lifetime "
                f"{exact_duration(self._max_lifetime)}; use a shorter-lived token"
            )
        return exp

    def _decode(self, token: str, kid: str | None, alg: str) -> dict[str, Any]:
        try:
            known = self._keys.key_for(kid)
        except UnknownKeyId:
            raise UnknownKeyId(self._unknown_key(token, kid)) from None
        keys = [k for k in known if key_fits_algorithm(k, alg)]
        if not keys:
            raise AuthenticationError(
                f"token algorithm {alg} does not match the issuer's key"
                + (f" {shown(kid)}" if kid else "s")
            )
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=self._audiences,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options={"require": ["exp", "iss", "sub", "aud"]},
                )
                return claims
            except jwt.InvalidSignatureError:
                continue
            except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
                raise _time_refusal(exc, token, self._clock()) from exc
            except jwt.PyJWTError as exc:
                raise _decode_failure(exc, self._issuer, self._audiences) from exc
            except (TypeError, ValueError, OverflowError) as exc:  # PyJWT on odd claim values
                raise AuthenticationError("token is malformed") from exc
        raise AuthenticationError("token signature does not verify with the issuer's keys")


THIS_CLOCK = "this CA's clock"


def _time_refusal(exc: jwt.PyJWTError, token: str, now: float) -> AuthenticationError:
    """Expired or not yet valid, by how much on this CA's clock (the signature verified, so
    the dates are the issuer's)."""
    claims = unverified_claims(token)
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthenticationError(expired_words(claims, now, clock=THIS_CLOCK))
    return AuthenticationError(not_yet_valid_words(claims, now, clock=THIS_CLOCK))


def _decode_failure(exc: jwt.PyJWTError, issuer: str, audiences: list[str]) -> AuthenticationError:
    """The public message for one of PyJWT's verification errors (nothing of the token)."""
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthenticationError(
            f"token audience does not include any of: {', '.join(audiences)}"
        )
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthenticationError(f"token issuer is not {issuer!r}")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return AuthenticationError(f"token lacks the {exc.claim!r} claim")
    return AuthenticationError("token is malformed or its signature does not verify")


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
