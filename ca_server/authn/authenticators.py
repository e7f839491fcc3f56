"""Authenticators: each turns a request's credentials into a `Caller`, or declines.

`authenticate(creds)` returns None when the request carries nothing this
authenticator understands, returns a `Caller` when it vouches for the request,
and raises `AuthenticationError` when the credential it understands is bad.
`Authentication` tries them in order; the first `Caller` wins (docs/COMPATIBILITY.md §1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from cryptography import x509

from ca_server.authn.jwks import JwksSource as JwksSource  # re-exported: worker builds it here
from ca_server.errors import AuthenticationError, ImpersonationRefused
from ca_server.identity import Caller, RequestCredentials, shown
from certs.errors import CertsError, InvalidSpiffeId
from certs.pem import load_certificates
from certs.spiffe_id import SpiffeId, TrustDomain, check_namespace, check_service_account
from certs.verify import verify_svid

log = logging.getLogger(__name__)

SA_PREFIX = "system:serviceaccount:"


class Authenticator(Protocol):
    name: str

    def authenticate(self, creds: RequestCredentials) -> Caller | None: ...

    def may_block(self, creds: RequestCredentials) -> bool:
        """Whether `authenticate(creds)` may wait on I/O (an API call, a key fetch); when
        not, an event loop may call it directly."""
        ...


@runtime_checkable
class ImpersonationAuthority(Protocol):
    """An authenticator that can decide node-bound impersonation for callers it vouched for."""

    name: str

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None: ...


@runtime_checkable
class Loading(Protocol):
    """An authenticator with something to read before it serves (an issuer's key file)."""

    def load(self) -> None:
        """Read it now; `UpstreamUnavailable` when it cannot be read."""


@runtime_checkable
class ClusterDirectory(Protocol):
    """An authenticator that knows which clusters a request may name (Kubernetes: the own
    cluster and the remote secrets' clusters)."""

    def known_clusters(self) -> frozenset[str]: ...


class IdentityExtractionError(AuthenticationError):
    """The credential is valid but names no workload identity (counted separately)."""


class Authentication:
    """Tries authenticators in order; reports every reason when all fail."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = tuple(authenticators)
        self._deciders = {
            a.name: a for a in self.authenticators if isinstance(a, ImpersonationAuthority)
        }

    def load(self) -> None:
        """Read what the authenticators need before the first request (a worker does, so a
        later lack of file descriptors cannot keep a key file from loading)."""
        for authenticator in self.authenticators:
            if isinstance(authenticator, Loading):
                authenticator.load()

    @property
    def binds_nodes(self) -> bool:
        """Whether some authenticator can bind a caller to a node (TokenReview: Kubernetes)."""
        return bool(self._deciders)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.authenticators)

    def known_clusters(self) -> frozenset[str]:
        """Every cluster ID some authenticator knows (empty without Kubernetes)."""
        found: frozenset[str] = frozenset()
        for a in self.authenticators:
            if isinstance(a, ClusterDirectory):
                found |= a.known_clusters()
        return found

    def may_block(self, creds: RequestCredentials) -> bool:
        """Whether `authenticate(creds)` may wait on I/O (then run it off the event loop)."""
        return any(a.may_block(creds) for a in self.authenticators)

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        """Whether a caller already in CA_TRUSTED_NODE_ACCOUNTS may act as `namespace/account`
        by the node binding (`ca_server.authn.impersonation` says when it is asked).

        An authenticator that can bind a caller to a node (TokenReview: Kubernetes) decides,
        as Istio's node authorizer does; a caller vouched for by any other authenticator is
        refused, and so is everyone when no authenticator binds nodes.
        """
        if not self._deciders:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: this CA does not use Kubernetes, "
                "so nothing binds a caller to a node"
            )
        decider = self._deciders.get(caller.authenticator)
        if decider is None:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: with Kubernetes, impersonation needs "
                "a pod-bound service-account token (TokenReview), not a "
                f"{caller.authenticator} credential"
            )
        decider.authorize_impersonation(caller, namespace, account)

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
    """`system:serviceaccount:<ns>:<sa>` to `(ns, sa)` with both names valid Kubernetes names
    (full match: no newline, '/' or ':' inside), or IdentityExtractionError."""
    if not subject.startswith(SA_PREFIX):
        raise IdentityExtractionError(
            f"token subject {shown(subject)} is not a Kubernetes service account (system:serviceaccount:NS:SA)"
        )
    parts = subject[len(SA_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        raise IdentityExtractionError(
            f"token subject {shown(subject)} is not system:serviceaccount:NS:SA"
        )
    try:
        return check_namespace(parts[0]), check_service_account(parts[1])
    except InvalidSpiffeId as exc:
        raise IdentityExtractionError(f"token subject: {exc}") from exc


def workload_identity(trust_domain: TrustDomain, namespace: str, account: str) -> SpiffeId:
    try:
        return SpiffeId.for_service_account(trust_domain, namespace, account)
    except InvalidSpiffeId as exc:
        raise IdentityExtractionError(f"not a valid workload identity: {exc}") from exc


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


def with_request(caller: Caller, creds: RequestCredentials) -> Caller:
    """`caller` (perhaps from a cache) as seen on this request: its peer and cluster."""
    if caller.peer == creds.peer and caller.cluster_id == creds.cluster_id:
        return caller
    return replace(caller, peer=creds.peer, cluster_id=creds.cluster_id)
