"""Requests routed by cluster: the `clusterid` metadata picks the API server that reviews the
token and checks the node (docs/COMPATIBILITY.md §4, Multicluster).

    clusterid       whose API server                      refusal when it cannot answer
    (none), own     the CA's own cluster (--cluster-id)   UNAVAILABLE (API server down)
    a remote one    that cluster's, from its remote secret UNAVAILABLE (down, or a broken
                                                          kubeconfig), for its callers only
    an alias        its cluster's (--cluster-aliases)     as for that cluster
    anything else   none                                  UNAUTHENTICATED naming the cluster

As in istiod, a cluster's own ID wins over an alias of the same name.

Each cluster has its own `TokenReviewAuthenticator` (and review cache): a token cluster B
issued, presented with `clusterid=A`, is reviewed by A's API server, which rejects it, and the
refusal names cluster A. A remote cluster's authenticator is replaced when its Secret changes
and dropped when the Secret goes; its client is closed only after the last request using it
has finished (never under a thread still reading from it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.identity import Caller, RequestCredentials, shown
from ca_server.kube.remote_secrets import RemoteCluster
from ca_server.kube.tokenreview import TokenReviewAuthenticator


class ClusterBackend:
    """One cluster's authenticator, counted in use so that its client outlives its requests."""

    def __init__(
        self,
        cluster_id: str,
        authenticator: TokenReviewAuthenticator | None,
        *,
        close: Callable[[], None] = lambda: None,
        error: str = "",
    ) -> None:
        self.cluster_id = cluster_id
        self.authenticator = authenticator
        self.error = error  # why `authenticator` is None
        self._close = close
        self._users = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            closing = self._retired and self._users == 0 and not self._closed
            self._closed = self._closed or closing
        if closing:
            self._close()

    def retire(self) -> None:
        """No new users; closed now if idle, else by the last user's `release`."""
        with self._lock:
            self._retired = True
            closing = self._users == 0 and not self._closed
            self._closed = self._closed or closing
        if closing:
            self._close()


BuildBackend = Callable[[RemoteCluster], ClusterBackend]


class ClusterRoutedTokenReview:
    """The CA's `tokenreview` authenticator when it serves several clusters (module docstring).

    It listens to `RemoteSecretWatch` (`cluster_set`, `cluster_removed`); `build` makes a
    remote cluster's backend from its kubeconfig."""

    name = "tokenreview"

    def __init__(
        self,
        own: TokenReviewAuthenticator,
        own_cluster_id: str,
        build: BuildBackend,
        aliases: Mapping[str, str] | None = None,
    ):
        self.own_cluster_id = own_cluster_id
        self._build = build
        self._aliases = dict(aliases or {})
        self._backends = {own_cluster_id: ClusterBackend(own_cluster_id, own)}
        self._lock = threading.Lock()

    # -- ClusterListener -------------------------------------------------------------------

    def cluster_set(self, cluster: RemoteCluster) -> None:
        if cluster.config is None:
            fresh = ClusterBackend(cluster.cluster_id, None, error=cluster.error)
        else:
            fresh = self._build(cluster)
        with self._lock:
            old = self._backends.get(cluster.cluster_id)
            self._backends[cluster.cluster_id] = fresh
        if old is not None:
            old.retire()

    def cluster_removed(self, cluster_id: str) -> None:
        if cluster_id == self.own_cluster_id:
            return
        with self._lock:
            old = self._backends.pop(cluster_id, None)
        if old is not None:
            old.retire()

    # -- Authenticator ---------------------------------------------------------------------

    def authenticate(self, creds: RequestCredentials) -> Caller | None:
        if not creds.bearer_token:
            return None
        with self._using(creds.cluster_id) as (cluster, authenticator):
            return authenticator.authenticate(replace(creds, cluster_id=cluster))

    def may_block(self, creds: RequestCredentials) -> bool:
        if not creds.bearer_token:
            return False
        with self._lock:
            backend = self._backends.get(self._resolve(creds.cluster_id))
        if backend is None or backend.authenticator is None:
            return False  # refused at once, no I/O
        return backend.authenticator.may_block(creds)

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        """The node check in the caller's own cluster (the one its token was reviewed by)."""
        with self._using(caller.cluster_id) as (_, authenticator):
            authenticator.authorize_impersonation(caller, namespace, account)

    def known_clusters(self) -> frozenset[str]:
        """Every cluster ID a request may name: the own one, the remote secrets' (usable or
        not) and the aliases; metrics label their series by these only."""
        with self._lock:
            return frozenset(self._backends) | frozenset(self._aliases)

    def _resolve(self, cluster_id: str) -> str:
        """The cluster a request naming `cluster_id` belongs to (call with the lock held)."""
        if not cluster_id:
            return self.own_cluster_id
        if cluster_id in self._backends:
            return cluster_id
        return self._aliases.get(cluster_id, cluster_id)

    @contextmanager
    def _using(self, cluster_id: str) -> Iterator[tuple[str, TokenReviewAuthenticator]]:
        with self._lock:
            cluster = self._resolve(cluster_id)
            backend = self._backends.get(cluster)
            if backend is not None:
                backend.acquire()
        if backend is None:
            raise AuthenticationError(
                f"unknown cluster {shown(cluster_id, 63)}: this CA serves {self.own_cluster_id!r} "
                "and the clusters of its remote secrets"
            )
        try:
            if backend.authenticator is None:
                raise UpstreamUnavailable(
                    f"cluster {cluster!r} is unavailable: its remote secret is unusable "
                    f"({backend.error})"
                )
            yield cluster, backend.authenticator
        finally:
            backend.release()


__all__ = ["BuildBackend", "ClusterBackend", "ClusterRoutedTokenReview"]
