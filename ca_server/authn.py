"""Authenticators: each turns a request's credentials into a `Caller`, or declines.

`authenticate(creds)` returns None when the request carries nothing this
authenticator understands, returns a `Caller` when it vouches for the request,
and raises `AuthenticationError` when the credential it understands is bad.
`Authentication` tries them in order; the first `Caller` wins (SPEC §1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography import x509

from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.identity import Caller, RequestCredentials
from certs.errors import CertsError, InvalidSpiffeId
from certs.pem import load_certificates
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid

log = logging.getLogger(__name__)

SA_PREFIX = "system:serviceaccount:"
JWKS_REFRESH_MIN_INTERVAL_S = 10.0


class Authenticator(Protocol):
    name: str

    def authenticate(self, creds: RequestCredentials) -> Caller | None: ...

    def may_block(self, creds: RequestCredentials) -> bool:
        """Whether `authenticate(creds)` may wait on I/O (an API call, a key fetch); when
        not, an event loop may call it directly."""
        ...


class IdentityExtractionError(AuthenticationError):
    """The credential is valid but names no workload identity (counted separately)."""


class Authentication:
    """Tries authenticators in order; reports every reason when all fail."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = tuple(authenticators)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.authenticators)

    def may_block(self, creds: RequestCredentials) -> bool:
        """Whether `authenticate(creds)` may wait on I/O (then run it off the event loop)."""
        return any(a.may_block(creds) for a in self.authenticators)

    def authenticate(self, creds: RequestCredentials) -> Caller:
        reasons: list[str] = []
        extraction_failed: IdentityExtractionError | None = None
        for authenticator in self.authenticators:
            try:
                caller = authenticator.authenticate(creds)
            except IdentityExtractionError as exc:
                extraction_failed = exc
                reasons.append(f"{authenticator.name}: {exc.public_message}")
                continue
            except AuthenticationError as exc:
                reasons.append(f"{authenticator.name}: {exc.public_message}")
                continue
            if caller is not None:
                return caller
        if not reasons:
            raise AuthenticationError(
                "no credential: send 'authorization: Bearer <service-account token>' "
                "or a client certificate issued by this CA"
            )
        error_cls = (
            IdentityExtractionError
            if extraction_failed and len(reasons) == 1
            else AuthenticationError
        )
        raise error_cls("authentication failed: " + "; ".join(reasons))


def split_service_account(subject: str) -> tuple[str, str]:
    """`system:serviceaccount:<ns>:<sa>` to `(ns, sa)`, or IdentityExtractionError."""
    if not subject.startswith(SA_PREFIX):
        raise IdentityExtractionError(
            f"token subject {subject!r} is not a Kubernetes service account (system:serviceaccount:NS:SA)"
        )
    parts = subject[len(SA_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        raise IdentityExtractionError(
            f"token subject {subject!r} is not system:serviceaccount:NS:SA"
        )
    return parts[0], parts[1]


def workload_identity(trust_domain: TrustDomain, namespace: str, account: str) -> SpiffeId:
    try:
        return SpiffeId.for_service_account(trust_domain, namespace, account)
    except InvalidSpiffeId as exc:
        raise IdentityExtractionError(
            f"service account {namespace}/{account} is not a valid SPIFFE path: {exc}"
        ) from exc


class ClientCertAuthenticator:
    """Renewal over mTLS: the SPIFFE ID of a client leaf that chains to our roots."""

    name = "client-cert"

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        trust_anchors: Callable[[], tuple[list[x509.Certificate], list[x509.Certificate]]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._trust_domain = trust_domain
        self._anchors = trust_anchors  # -> (intermediates, roots)
        self._clock = clock

    def may_block(self, creds: RequestCredentials) -> bool:
        return False  # CPU only

    def authenticate(self, creds: RequestCredentials) -> Caller | None:
        if not creds.client_cert_pem:
            return None
        try:
            chain = load_certificates(creds.client_cert_pem, what="client certificate")
            intermediates, roots = self._anchors()
            leaf = chain[0]
            presented = [c for c in chain[1:] if c != leaf and c not in roots]
            spiffe_id = verify_svid([leaf, *presented, *intermediates], roots, now=self._clock())
        except CertsError as exc:
            raise AuthenticationError(f"client certificate rejected: {exc}") from exc
        if spiffe_id.trust_domain != self._trust_domain:
            raise IdentityExtractionError(
                f"client certificate is for another trust domain: {spiffe_id}"
            )
        account = spiffe_id.service_account()
        if account is None:
            raise IdentityExtractionError(
                f"client certificate identity {spiffe_id} is not ns/NS/sa/SA"
            )
        return Caller(
            spiffe_id=spiffe_id,
            namespace=account[0],
            service_account=account[1],
            authenticator=self.name,
            subject=str(spiffe_id),
            cluster_id=creds.cluster_id,
            peer=creds.peer,
            expires_at=leaf.not_valid_after_utc.timestamp(),
        )


class JwksSource:
    """Signing keys of one issuer: a static JWKS file, or discovered from the issuer URL.

    Keys are cached; an unknown `kid` triggers a refresh at most every 10 seconds.
    """

    def __init__(
        self,
        *,
        jwks_file: Path | None = None,
        issuer_url: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if jwks_file is None and issuer_url is None:
            raise ValueError("JwksSource needs a JWKS file or an issuer URL")
        self._file = jwks_file
        self._issuer_url = issuer_url
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._unnamed: list[jwt.PyJWK] = []
        self._fetched_at = float("-inf")

    @property
    def remote(self) -> bool:
        """Whether a refresh reads the network (discovery) rather than a local file."""
        return self._file is None

    def key_for(self, kid: str | None) -> list[jwt.PyJWK]:
        with self._lock:
            if (not self._keys and not self._unnamed) or (kid and kid not in self._keys):
                self._refresh_locked()
            if kid:
                found = self._keys.get(kid)
                if found is None:
                    raise AuthenticationError(
                        f"token key id {kid!r} is not among the issuer's signing keys"
                    )
                return [found]
            return list(self._keys.values()) + self._unnamed

    def _refresh_locked(self) -> None:
        now = time.monotonic()
        if now - self._fetched_at < JWKS_REFRESH_MIN_INTERVAL_S:
            return
        self._fetched_at = now
        document = self._read_jwks()
        try:
            keyset = jwt.PyJWKSet.from_dict(document)
        except jwt.PyJWTError as exc:
            raise UpstreamUnavailable("the issuer's JWKS holds no usable key") from exc
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
        self._unnamed = [k for k in keyset.keys if not k.key_id]

    def _read_jwks(self) -> dict[str, Any]:
        try:
            if self._file is not None:
                data: dict[str, Any] = json.loads(self._file.read_text())
                return data
            assert self._issuer_url is not None
            discovery = _get_json(
                self._issuer_url.rstrip("/") + "/.well-known/openid-configuration", self._timeout
            )
            return _get_json(str(discovery["jwks_uri"]), self._timeout)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot load the JWKS: %s", exc)
            raise UpstreamUnavailable(
                "the token issuer's signing keys cannot be loaded; retry later"
            ) from exc


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


class JwtAuthenticator:
    """OIDC/JWKS service-account tokens: signature, `iss`, `aud` overlap, `exp`, `nbf`, `sub`."""

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
        leeway_s: float = 0.0,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audiences = list(audiences)
        self._algorithms = list(algorithms)
        self._trust_domain = trust_domain
        self._cache: OrderedDict[bytes, Caller] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._leeway = leeway_s

    def authenticate(self, creds: RequestCredentials) -> Caller | None:
        token = creds.bearer_token
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cached(digest)
        if cached is not None:
            return _with_request(cached, creds)
        caller = self._verify(token, creds)
        with self._cache_lock:
            self._cache[digest] = caller
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
            caller = self._cache.get(digest)
            if caller is None:
                return None
            if caller.expires_at is not None and caller.expires_at <= time.time():
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return caller

    def _verify(self, token: str, creds: RequestCredentials) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("bearer token is not a JWT") from exc
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise AuthenticationError(
                f"token algorithm {alg!r} is not allowed (allowed: {', '.join(self._algorithms)})"
            )
        claims = self._decode(token, header.get("kid"), str(alg))
        namespace, account = split_service_account(str(claims.get("sub", "")))
        pod = (claims.get("kubernetes.io") or {}).get("pod") or {}
        return Caller(
            spiffe_id=workload_identity(self._trust_domain, namespace, account),
            namespace=namespace,
            service_account=account,
            authenticator=self.name,
            subject=str(claims["sub"]),
            pod_name=str(pod.get("name", "")),
            pod_uid=str(pod.get("uid", "")),
            cluster_id=creds.cluster_id,
            peer=creds.peer,
            expires_at=float(claims["exp"]),
        )

    def _decode(self, token: str, kid: str | None, alg: str) -> dict[str, Any]:
        last: jwt.PyJWTError | None = None
        for key in self._keys.key_for(kid):
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
            except jwt.InvalidSignatureError as exc:
                last = exc
            except jwt.ExpiredSignatureError as exc:
                raise AuthenticationError("token has expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise AuthenticationError("token is not valid yet (nbf/iat in the future)") from exc
            except jwt.InvalidAudienceError as exc:
                raise AuthenticationError(
                    f"token audience does not include any of: {', '.join(self._audiences)}"
                ) from exc
            except jwt.InvalidIssuerError as exc:
                raise AuthenticationError(f"token issuer is not {self._issuer!r}") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from exc
            except jwt.PyJWTError as exc:
                raise AuthenticationError(
                    "token is malformed or its signature does not verify"
                ) from exc
        raise AuthenticationError(
            "token signature does not verify with the issuer's keys"
        ) from last


def _with_request(caller: Caller, creds: RequestCredentials) -> Caller:
    if caller.peer == creds.peer and caller.cluster_id == creds.cluster_id:
        return caller
    return replace(caller, peer=creds.peer, cluster_id=creds.cluster_id)
