"""The remote clusters a CA serves, kept live from the remote secrets of its namespace.

`RemoteSecretWatch` lists the Secrets labelled `istio/multiCluster: "true"` in the CA's
namespace, then watches them; after any error it lists again (a Secret deleted while the watch
was down leaves no event). From the current Secrets it derives the remote clusters as istiod
does: each data key is a cluster; a key equal to the CA's own cluster ID is ignored; when two
Secrets name one cluster, the first by namespace/name order keeps it. Listeners hear each
change (`cluster_set` for a new or changed kubeconfig, `cluster_removed`), on the watch's
thread, one at a time.

A problem (a broken kubeconfig, a conflict, the Secrets cannot be listed) is logged once when
it appears, by the watch that `reports` (the supervisor's); the workers' watches log it at
debug level, so one broken Secret makes one line, not one per process. A broken kubeconfig
still registers its cluster, unusable: its callers are told the cluster is unavailable, not
unknown.

The thread owns its client and closes it when it ends; `stop()` never closes a client under
a thread blocked reading it (see `RootCertPublisher.stop`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import httpx2
from lightkube import ApiError, Client
from lightkube.core.client import LabelSelector
from lightkube.resources.core_v1 import Secret
from lightkube.types import OnErrorAction, OnErrorResult

from ca_server.kube.remote_secrets import (
    MULTICLUSTER_LABEL,
    RemoteCluster,
    clusters_of,
    secret_key,
)

log = logging.getLogger(__name__)
FORBIDDEN_BACKOFF = 12  # times the retry interval, while the CA may not read the Secrets


class ClusterListener(Protocol):
    """Told of every change to the set of remote clusters."""

    def cluster_set(self, cluster: RemoteCluster) -> None:
        """A cluster appeared, or its Secret (kubeconfig, owner) changed."""
        ...

    def cluster_removed(self, cluster_id: str) -> None: ...


def desired_clusters(
    secrets: Iterable[Secret], own_cluster_id: str
) -> tuple[dict[str, RemoteCluster], list[str]]:
    """The clusters the given remote secrets define, and the problems worth one log line each."""
    chosen: dict[str, RemoteCluster] = {}
    problems: list[str] = []
    for secret in sorted(secrets, key=secret_key):
        clusters, notes = clusters_of(secret)
        problems += notes
        for cluster in clusters:
            if cluster.cluster_id == own_cluster_id:
                problems.append(
                    f"remote secret {cluster.secret} names this CA's own cluster "
                    f"{own_cluster_id!r}; ignored"
                )
            elif cluster.cluster_id in chosen:
                problems.append(
                    f"remote secret {cluster.secret} names cluster {cluster.cluster_id!r}, "
                    f"already defined by {chosen[cluster.cluster_id].secret}; ignored"
                )
            else:
                chosen[cluster.cluster_id] = cluster
                if not cluster.usable:
                    problems.append(
                        f"remote cluster {cluster.cluster_id!r} (secret {cluster.secret}) is "
                        f"unavailable: {cluster.error}"
                    )
    return chosen, problems


class RemoteSecretWatch:
    """The live set of remote clusters (module docstring); listeners are told of changes."""

    def __init__(
        self,
        make_client: Callable[[], Client],
        *,
        namespace: str,
        own_cluster_id: str,
        listeners: Sequence[ClusterListener] = (),
        reports: bool = True,
        watch_seconds: int = 30,
        retry_seconds: float = 5.0,
    ) -> None:
        self._make_client = make_client
        self._namespace = namespace
        self._own = own_cluster_id
        self._listeners = list(listeners)
        # One line per problem from the reporting watch; the others' lines are debug only.
        self._warning = logging.WARNING if reports else logging.DEBUG
        self._info = logging.INFO if reports else logging.DEBUG
        self._watch_seconds = watch_seconds
        self._retry = retry_seconds
        self._secrets: dict[str, Secret] = {}
        self._clusters: dict[str, RemoteCluster] = {}
        self._problems: set[str] = set()
        self._error = ""
        self._lock = threading.Lock()
        self._first_listing = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_listener(self, listener: ClusterListener) -> None:
        """Before `start`: one more listener."""
        self._listeners.append(listener)

    def start(self, *, wait_seconds: float = 10.0) -> RemoteSecretWatch:
        """Start watching; return once the first listing was applied (or failed, or
        `wait_seconds` passed), so a fresh CA knows its clusters before it serves."""
        self._thread = threading.Thread(target=self._run, name="remote-secrets", daemon=True)
        self._thread.start()
        self._first_listing.wait(wait_seconds)
        return self

    def stop(self) -> None:
        """Stop telling listeners; the thread ends at its stream's next event or timeout."""
        self._stop.set()

    def clusters(self) -> dict[str, RemoteCluster]:
        with self._lock:
            return dict(self._clusters)

    @property
    def error(self) -> str:
        """Why the remote secrets cannot be read now ("" while they can)."""
        return self._error

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        client = self._make_client()
        try:
            while not self._stop.is_set():
                wait = self._retry
                try:
                    self._list_then_watch(client)
                except (ApiError, httpx2.HTTPError, RuntimeError) as exc:
                    if self._stop.is_set():
                        return
                    wait = self._failed(exc)
                self._first_listing.set()
                self._stop.wait(wait)
        finally:
            client.close()

    def _list_then_watch(self, client: Client) -> None:
        labels: LabelSelector = {MULTICLUSTER_LABEL: "true"}
        listing = client.list(Secret, namespace=self._namespace, labels=labels)
        secrets = {secret_key(s): s for s in listing}
        self._error = ""
        self._replace(secrets)
        self._first_listing.set()
        events = client.watch(
            Secret,
            namespace=self._namespace,
            labels=labels,
            resource_version=listing.resourceVersion,
            server_timeout=self._watch_seconds,
            on_error=self._on_watch_error,
        )
        for event, secret in events:
            if self._stop.is_set():
                return
            current = dict(self._secrets)
            if event == "DELETED":
                current.pop(secret_key(secret), None)
            else:
                current[secret_key(secret)] = secret
            self._replace(current)

    def _on_watch_error(self, exc: Exception, count: int) -> OnErrorResult:
        # Any error: leave the watch, list again (deletions during a gap leave no event).
        if self._stop.is_set():
            return OnErrorResult(OnErrorAction.STOP)
        return OnErrorResult(OnErrorAction.RAISE)

    def _failed(self, exc: Exception) -> float:
        """Note why the Secrets cannot be read (logged when it changes); how long to wait.
        Refused access is retried slowly: it ends when an operator changes the RBAC."""
        wait = self._retry
        if isinstance(exc, ApiError):
            why = f"{exc.status.code} {exc.status.reason}"
            if exc.status.code in (401, 403):
                why += (
                    " (grant the CA list and watch on secrets there, or --kube-remote-secrets off)"
                )
                wait = self._retry * FORBIDDEN_BACKOFF
        else:
            why = type(exc).__name__
        error = f"cannot read remote secrets in {self._namespace}: {why}"
        if error != self._error:
            log.log(self._warning, "%s; retrying every %.0f s", error, wait)
        self._error = error
        return wait

    # -- state -----------------------------------------------------------------------------

    def _replace(self, secrets: dict[str, Secret]) -> None:
        """Make `secrets` current and tell listeners what changed (removals first)."""
        wanted, problems = desired_clusters(secrets.values(), self._own)
        with self._lock:
            before = self._clusters
            self._secrets, self._clusters = secrets, wanted
        for problem in problems:
            if problem not in self._problems:
                log.log(self._warning, "%s", problem)
        self._problems = set(problems)
        for cluster_id in sorted(before.keys() - wanted.keys()):
            log.log(self._info, "remote cluster %r removed", cluster_id)
            for listener in self._listeners:
                listener.cluster_removed(cluster_id)
        for cluster_id, cluster in sorted(wanted.items()):
            old = before.get(cluster_id)
            if old is not None and (old.digest, old.secret) == (cluster.digest, cluster.secret):
                continue
            if cluster.usable:
                what = "added" if old is None else "updated"
                log.log(self._info, "remote cluster %r %s from secret %s (API server %s)",
                        cluster_id, what, cluster.secret, cluster.server)  # fmt: skip
            for listener in self._listeners:
                listener.cluster_set(cluster)


__all__ = ["ClusterListener", "RemoteSecretWatch", "desired_clusters"]
