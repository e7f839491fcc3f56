"""Kubernetes service-account tokens checked with the TokenReview API (docs/COMPATIBILITY.md §1, authenticator 2).

The API server does the cryptography and the liveness check (a deleted service account or
pod invalidates its tokens); this module asks it, insists on a service-account identity,
and caches positive answers until the token expires so a renewal storm costs one review
per token, not one per request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import httpx2
from lightkube import ApiError, Client
from lightkube.models.authentication_v1 import TokenReviewSpec, UserInfo
from lightkube.resources.authentication_v1 import TokenReview

from ca_server.errors import AuthenticationError, ImpersonationRefused, UpstreamUnavailable
from ca_server.identity import Caller, RequestCredentials, shown
from ca_server.kube.node_auth import KubeNodeAuthorizer
from ca_server.kube.settings import DEFAULT_CLUSTER_ID
from ca_server.options import ISTIO_CA_AUDIENCE
from certs.errors import InvalidSpiffeId, JwtError
from certs.jwt_rules import (
    CLOCK_SUSPECT_S,
    expired_words,
    not_yet_valid_words,
    numeric_date,
    unverified_claims,
)
from certs.spiffe_id import SpiffeId, TrustDomain, check_namespace, check_service_account
from certs.values import format_duration

SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
USERNAME_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
DEFAULT_CACHE_ENTRIES = 10_000
# A reviewed token is trusted from the cache at most this long, whatever its `exp` (the API
# server revokes tokens of deleted pods and accounts; extended tokens live a year).
DEFAULT_CACHE_SECONDS = 300.0
THIS_CLOCK = "this CA's clock"
CLOCK_WARNING_EVERY_S = 600.0  # a clock that disagrees with the API server, said this often
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Cached:
    caller: Caller
    expires_at: float


class TokenReviewAuthenticator:
    """Authenticates `authorization: Bearer <jwt>` by asking one cluster's API server who the
    token is (`routing.ClusterRoutedTokenReview` picks the cluster when there are several).

    Returns None when the request carries no token; raises AuthenticationError when the token
    is rejected or is not a service account's; UpstreamUnavailable when the API cannot answer.
    Every refusal names the cluster that was asked.
    """

    name = "tokenreview"

    def __init__(
        self,
        client: Client,
        *,
        trust_domain: TrustDomain,
        audiences: Sequence[str] = (ISTIO_CA_AUDIENCE,),
        cluster_id: str = DEFAULT_CLUSTER_ID,
        max_cache_entries: int = DEFAULT_CACHE_ENTRIES,
        max_cache_seconds: float | None = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        node_authorizer: KubeNodeAuthorizer | None = None,
    ) -> None:
        """`node_authorizer`: the node binding for impersonation; None when no node account
        is trusted (impersonation is then refused before it is asked)."""
        if not audiences:
            raise ValueError("TokenReview needs at least one audience")
        self._client = client
        self._trust_domain = trust_domain
        self._audiences = list(audiences)
        self._cluster_id = cluster_id
        self._max_entries = max_cache_entries
        self._max_cache_seconds = max_cache_seconds
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self._clock_warned = float("-inf")
        self._node_authorizer = node_authorizer

    def authenticate(self, creds: RequestCredentials) -> Caller | None:
        token = creds.bearer_token
        if not token:
            return None
        if creds.cluster_id not in ("", self._cluster_id):
            raise AuthenticationError(
                f"unknown cluster {shown(creds.cluster_id, 63)}: this authenticator reviews "
                f"tokens of cluster {self._cluster_id!r} only"
            )
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache_get(key)
        if cached is not None:
            return _with_request(cached, creds)
        token_exp = _unverified_exp(token)
        # The cluster whose API server vouched for the token: the request's, or this one.
        caller = replace(self._review(token), expires_at=token_exp, cluster_id=self._cluster_id)
        self._check_clock(token_exp)
        expires_at = self._cache_until(token_exp)
        if expires_at is not None:
            self._cache_put(key, _Cached(caller=caller, expires_at=expires_at))
        return _with_request(caller, creds)

    def may_block(self, creds: RequestCredentials) -> bool:
        """A token not reviewed before (or whose review expired) needs the API server."""
        token = creds.bearer_token
        if not token:
            return False
        return self._cache_get(hashlib.sha256(token.encode()).hexdigest()) is None

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        """Node-bound impersonation (kube/node_auth.py): `account` must have a pod on the
        caller's node, as the pod cache knows it (no I/O)."""
        if self._node_authorizer is None:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: no node account is trusted "
                "(--trusted-node-accounts), so this CA does not watch pods"
            )
        self._node_authorizer.authorize(caller, namespace, account)

    def cache_size(self) -> int:
        with self._lock:
            return len(self._cache)

    def _review(self, token: str) -> Caller:
        review = TokenReview(spec=TokenReviewSpec(token=token, audiences=self._audiences))
        try:
            result = self._client.create(review)
        except ApiError as exc:
            raise UpstreamUnavailable(
                f"TokenReview failed in cluster {self._cluster_id!r}: API server answered "
                f"{exc.status.code} {exc.status.reason}"
            ) from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(
                f"TokenReview failed in cluster {self._cluster_id!r}: API server unreachable "
                f"({type(exc).__name__})"
            ) from exc
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            reason = (status.error if status is not None else None) or "not authenticated"
            raise AuthenticationError(
                f"token rejected by TokenReview of cluster {self._cluster_id!r}: {_short(reason)}"
                + _time_hint(reason, token, self._clock())
            )
        if status.audiences is not None and not set(status.audiences) & set(self._audiences):
            raise AuthenticationError(
                f"token rejected by TokenReview of cluster {self._cluster_id!r}: "
                "no accepted audience"
            )
        return self._caller_from(status.user)

    def _caller_from(self, user: UserInfo) -> Caller:
        username = user.username or ""
        if SERVICE_ACCOUNTS_GROUP not in (user.groups or []):
            raise AuthenticationError(
                f"token of {shown(username, 80)} is not in group {SERVICE_ACCOUNTS_GROUP}"
            )
        try:
            namespace, account = _service_account_of(username)
            spiffe_id = SpiffeId.for_service_account(self._trust_domain, namespace, account)
        except InvalidSpiffeId as exc:
            raise AuthenticationError(f"token user {shown(username, 80)}: {exc}") from exc
        extra = user.extra or {}
        return Caller(
            spiffe_id=spiffe_id,
            namespace=namespace,
            service_account=account,
            authenticator=self.name,
            subject=username,
            pod_name=_first(extra.get(POD_NAME_EXTRA)),
            pod_uid=_first(extra.get(POD_UID_EXTRA)),
            node_name=_first(extra.get(NODE_NAME_EXTRA)),
        )

    def _check_clock(self, exp: float | None) -> None:
        """The API server accepted a token whose `exp` passed long ago by this CA's clock:
        one of the two clocks is wrong (warned at most every CLOCK_WARNING_EVERY_S)."""
        now = self._clock()
        if exp is None or now - exp < CLOCK_SUSPECT_S:
            return
        with self._lock:
            if now - self._clock_warned < CLOCK_WARNING_EVERY_S:
                return
            self._clock_warned = now
        log.warning(
            "the API server accepted a token that expired %s ago by %s: this CA's clock or "
            "the API server's is wrong (check NTP on both)",
            format_duration(now - exp),
            THIS_CLOCK,
        )

    def _cache_until(self, exp: float | None) -> float | None:
        """The token's `exp` (capped); trusted only because the API server accepted the token."""
        if exp is None:
            return None
        if self._max_cache_seconds is not None:
            exp = min(exp, self._clock() + self._max_cache_seconds)
        return exp if exp > self._clock() else None

    def _cache_get(self, key: str) -> Caller | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry.expires_at <= self._clock():
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return entry.caller

    def _cache_put(self, key: str, entry: _Cached) -> None:
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)


def _service_account_of(username: str) -> tuple[str, str]:
    """`system:serviceaccount:<ns>:<sa>` to valid Kubernetes names, or InvalidSpiffeId."""
    parts = username.split(":")
    if not username.startswith(USERNAME_PREFIX) or len(parts) != 4:
        raise InvalidSpiffeId("not system:serviceaccount:<ns>:<sa>")
    return check_namespace(parts[2]), check_service_account(parts[3])


def _with_request(caller: Caller, creds: RequestCredentials) -> Caller:
    return replace(caller, peer=creds.peer)


def _unverified_exp(token: str) -> float | None:
    """The token's `exp` for the review cache; None (not cached) unless it is whole seconds."""
    try:
        exp = numeric_date(unverified_claims(token), "exp")
    except JwtError:
        return None
    return float(exp) if exp is not None else None


def _time_hint(reason: str, token: str, now: float) -> str:
    """For the API server's "expired" or "not valid yet": how far off that is by this CA's
    clock, and the clocks as suspects when the two disagree or the gap is large."""
    lowered = reason.lower()
    try:
        claims = unverified_claims(token)
    except JwtError:
        return ""
    if "expired" in lowered:
        exp = _unverified_exp(token)
        if exp is not None and exp > now:
            return (
                f" (by {THIS_CLOCK} it is valid for another {format_duration(exp - now)}: the "
                "API server's clock or this CA's is wrong, check NTP on both)"
            )
        return (
            f" ({expired_words(claims, now, clock=THIS_CLOCK).removeprefix('token has expired: ')})"
        )
    if "not valid yet" in lowered or "future" in lowered:
        words = not_yet_valid_words(claims, now, clock=THIS_CLOCK)
        return f" ({words.removeprefix('token is not valid yet: ')})"
    return ""


def _first(values: object) -> str:
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return ""


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["DEFAULT_CLUSTER_ID", "TokenReviewAuthenticator"]
