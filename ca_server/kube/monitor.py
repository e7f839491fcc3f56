"""The supervisor's side of the clusters a CA serves: root ConfigMaps in each remote cluster,
and whether each cluster's API server answers.

`ClusterMonitor` listens to the supervisor's `RemoteSecretWatch`. For each usable remote
cluster it runs a `RootCertPublisher` of its own (the leader writes `istio-ca-root-cert` into
the namespaces Istio would use there, and repairs edits and deletions, exactly as in the own
cluster) and a prober: every few seconds one small authenticated call (the first namespace)
says whether the API server answers with the remote secret's credentials, and when it last
did. The own cluster is probed too; its publisher is `KubeControllers`'. A changed Secret
restarts both with the new kubeconfig; a removed one stops them.

Every thread owns its client and closes it when it ends (see `RootCertPublisher.stop`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx2
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Namespace

from ca_server.kube.client import make_client
from ca_server.kube.remote_secrets import RemoteCluster
from ca_server.kube.rootcm import RootCertPublisher
from ca_server.kube.status import ClusterStatus

log = logging.getLogger(__name__)

DEFAULT_PROBE_SECONDS = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherSettings:
    """How every cluster's root ConfigMaps are kept."""

    root_pem: Callable[[], str]
    is_leader: Callable[[], bool]
    name: str
    resync_seconds: float


class _Prober:
    """Probes one cluster's API server on its own thread until stopped."""

    def __init__(
        self,
        make: Callable[[], Client],
        status: ClusterStatus,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._make = make
        self.status = status
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cluster-probe-{status.cluster_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client = self._make()
        try:
            while not self._stop.is_set():
                self._probe(client)
                self._stop.wait(self._interval)
        finally:
            client.close()

    def _probe(self, client: Client) -> None:
        try:
            next(iter(client.list(Namespace, chunk_size=1)), None)
        except ApiError as exc:
            self._seen(False, f"API server answered {exc.status.code} {exc.status.reason}")
        except httpx2.HTTPError as exc:
            self._seen(False, f"API server unreachable ({type(exc).__name__})")
        else:
            self._seen(True, "")

    def _seen(self, reachable: bool, error: str) -> None:
        before = self.status
        synced = self._clock() if reachable else before.last_sync
        self.status = replace(before, reachable=reachable, last_sync=synced, error=error)
        if before.reachable is not reachable and (before.reachable is not None or not reachable):
            level = logging.INFO if reachable else logging.WARNING
            state = "reachable again" if reachable else f"unreachable: {error}"
            log.log(level, "cluster %r is %s", before.cluster_id, state)


class ClusterMonitor:
    """Root ConfigMaps and probes per cluster (module docstring); a `ClusterListener`."""

    def __init__(
        self,
        *,
        own_cluster_id: str,
        own_client: Callable[[], Client],
        publishing: PublisherSettings,
        probe_seconds: float = DEFAULT_PROBE_SECONDS,
    ) -> None:
        self._own = own_cluster_id
        self._own_client = own_client
        self._publishing = publishing
        self._probe_seconds = probe_seconds
        self._probers: dict[str, _Prober] = {}
        self._broken: dict[str, ClusterStatus] = {}  # remote clusters with unusable secrets
        self._publishers: dict[str, RootCertPublisher] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        own = ClusterStatus(cluster_id=self._own, local=True, source="local")
        self._swap(self._own, _Prober(self._own_client, own, self._probe_seconds), None)

    def stop(self) -> None:
        with self._lock:
            probers, self._probers = self._probers, {}
            publishers, self._publishers = self._publishers, {}
        for prober in probers.values():
            prober.stop()
        for publisher in publishers.values():
            publisher.stop()

    def statuses(self) -> list[ClusterStatus]:
        """The own cluster first, then the remote ones by ID."""
        with self._lock:
            found = [p.status for p in self._probers.values()] + list(self._broken.values())
        return sorted(found, key=lambda s: (not s.local, s.cluster_id))

    # -- ClusterListener -------------------------------------------------------------------

    def cluster_set(self, cluster: RemoteCluster) -> None:
        status = ClusterStatus(
            cluster_id=cluster.cluster_id,
            local=False,
            source=f"secret {cluster.secret}",
            server=cluster.server,
            reachable=None if cluster.usable else False,
            error=cluster.error,
        )
        if cluster.config is None:
            self._swap(cluster.cluster_id, None, None)
            with self._lock:
                self._broken[cluster.cluster_id] = status
            return
        config = cluster.config

        def make() -> Client:
            return make_client(config)

        settings = self._publishing
        publisher = RootCertPublisher(
            make,
            root_pem=settings.root_pem,
            is_leader=settings.is_leader,
            name=settings.name,
            resync_seconds=settings.resync_seconds,
            cluster=cluster.cluster_id,
        )
        self._swap(cluster.cluster_id, _Prober(make, status, self._probe_seconds), publisher)

    def cluster_removed(self, cluster_id: str) -> None:
        self._swap(cluster_id, None, None)

    def _swap(
        self, cluster_id: str, prober: _Prober | None, publisher: RootCertPublisher | None
    ) -> None:
        """Install a cluster's new prober and publisher (started), stopping the old ones."""
        with self._lock:
            self._broken.pop(cluster_id, None)
            old_prober = self._probers.pop(cluster_id, None)
            old_publisher = self._publishers.pop(cluster_id, None)
            if prober is not None:
                self._probers[cluster_id] = prober
            if publisher is not None:
                self._publishers[cluster_id] = publisher
        if old_prober is not None:
            old_prober.stop()
        if old_publisher is not None:
            old_publisher.stop()
        if prober is not None:
            prober.start()
        if publisher is not None:
            publisher.start()


__all__ = ["ClusterMonitor", "PublisherSettings"]
