"""Assembling the Kubernetes pieces for the CA server.

supervisor: load_or_create_material(...)   -> self-signed root kept in `istio-ca-secret`
            KubeControllers(settings, ...) -> Lease elector + root ConfigMap publisher
                                              (+ istiod's serving certificate Secret)
                                              + remote clusters: their root ConfigMaps and
                                              probes (`ClusterMonitor`, fed by a
                                              `RemoteSecretWatch` that reports problems)
workers:    tokenreview_authenticator(cfg) -> TokenReviewAuthenticator (one per process), or,
                                              with remote secrets, `ClusterRoutedTokenReview`
                                              fed by the worker's own quiet watch
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from lightkube import Client

from ca_server.authority.custody import FILE_CUSTODY, KeyCustody
from ca_server.authority.material import CaMaterial, load_or_create
from ca_server.errors import ConfigError
from ca_server.kube.client import load_config, make_client
from ca_server.kube.clusters import ClusterListener, RemoteSecretWatch
from ca_server.kube.errors import KubeError
from ca_server.kube.istiod_cert import IstiodCertWriter
from ca_server.kube.leader import LeaderElector
from ca_server.kube.monitor import DEFAULT_PROBE_SECONDS, ClusterMonitor, PublisherSettings
from ca_server.kube.remote_secrets import RemoteCluster
from ca_server.kube.rootcm import RootCertPublisher
from ca_server.kube.routing import ClusterBackend, ClusterRoutedTokenReview
from ca_server.kube.secret_store import SecretKeyStore
from ca_server.kube.settings import KubeSettings
from ca_server.kube.status import ClusterStatus
from ca_server.kube.status import exposition as cluster_exposition
from ca_server.kube.tokenreview import TokenReviewAuthenticator
from certs.spiffe_id import TrustDomain

if TYPE_CHECKING:
    from ca_server.config import CaConfig

log = logging.getLogger(__name__)


def client_factory(settings: KubeSettings) -> Callable[[], Client]:
    config = load_config(settings.kubeconfig, service_host=settings.service_host)
    return lambda: make_client(config)


def key_store(settings: KubeSettings, custody: KeyCustody = FILE_CUSTODY) -> SecretKeyStore:
    """Self-signed CA material in `istio-ca-secret` of the CA's namespace (certificates only,
    with the key's URI, when the key is in an HSM)."""
    return SecretKeyStore(
        client_factory(settings)(),
        namespace=settings.namespace,
        name=settings.ca_secret_name,
        custody=custody,
    )


def load_or_create_material(
    settings: KubeSettings,
    trust_domain: TrustDomain,
    now: datetime,
    custody: KeyCustody = FILE_CUSTODY,
) -> CaMaterial:
    """The self-signed root from `istio-ca-secret`, created there on the first start of any
    replica. API failures become ConfigError: the CA cannot start without its key."""
    try:
        return load_or_create(key_store(settings, custody), trust_domain, now, custody)
    except KubeError as exc:
        raise ConfigError(f"CA material in Kubernetes: {exc}") from exc


def build_tokenreview_authenticator(
    settings: KubeSettings, *, trust_domain: TrustDomain, audiences: Sequence[str]
) -> TokenReviewAuthenticator | ClusterRoutedTokenReview:
    """The own cluster's TokenReview; with remote secrets, routed by cluster, the remote
    clusters kept current by this process's own watch (started here)."""
    make = client_factory(settings)
    own = TokenReviewAuthenticator(
        make(), trust_domain=trust_domain, audiences=audiences, cluster_id=settings.cluster_id
    )
    if not settings.remote_secrets and not settings.cluster_aliases:
        return own

    def build(cluster: RemoteCluster) -> ClusterBackend:
        assert cluster.config is not None
        client = make_client(cluster.config)
        remote = TokenReviewAuthenticator(
            client, trust_domain=trust_domain, audiences=audiences, cluster_id=cluster.cluster_id
        )
        return ClusterBackend(cluster.cluster_id, remote, close=client.close)

    router = ClusterRoutedTokenReview(
        own, settings.cluster_id, build, aliases=dict(settings.cluster_aliases)
    )
    if settings.remote_secrets:
        remote_secret_watch(settings, make, router, reports=False).start()
    return router


def remote_secret_watch(
    settings: KubeSettings,
    make: Callable[[], Client],
    listener: ClusterListener,
    *,
    reports: bool,
) -> RemoteSecretWatch:
    return RemoteSecretWatch(
        make,
        namespace=settings.namespace,
        own_cluster_id=settings.cluster_id,
        listeners=[listener],
        reports=reports,
    )


def tokenreview_authenticator(
    config: CaConfig,
) -> TokenReviewAuthenticator | ClusterRoutedTokenReview:
    """The TokenReview authenticator for a worker process of a CA configured for Kubernetes."""
    settings = config.kube
    if settings is None:
        raise ValueError("tokenreview_authenticator needs a CA configured for Kubernetes")
    return build_tokenreview_authenticator(
        settings, trust_domain=config.trust_domain, audiences=config.audiences
    )


class KubeControllers:
    """The leader-only writers of one CA replica: Lease election, the root publisher and,
    with `--istiod-cert-secret`, istiod's serving certificate."""

    def __init__(
        self,
        settings: KubeSettings,
        *,
        root_pem: Callable[[], str],
        material: Callable[[], CaMaterial] | None = None,
    ) -> None:
        make = client_factory(settings)
        self.elector = LeaderElector(
            make(),
            namespace=settings.namespace,
            identity=settings.identity,
            name=settings.lease_name,
            timing=settings.lease,
        )
        self.publisher = RootCertPublisher(
            make,
            root_pem=root_pem,
            is_leader=self.elector.is_leader,
            name=settings.root_configmap_name,
            resync_seconds=settings.resync_seconds,
        )
        self.istiod_cert: IstiodCertWriter | None = None
        if settings.istiod_cert is not None and material is not None:
            self.istiod_cert = IstiodCertWriter(
                make(), settings.istiod_cert, material=material, is_leader=self.elector.is_leader
            )
        self.clusters = ClusterMonitor(
            own_cluster_id=settings.cluster_id,
            own_client=make,
            publishing=PublisherSettings(
                root_pem=root_pem,
                is_leader=self.elector.is_leader,
                name=settings.root_configmap_name,
                resync_seconds=settings.resync_seconds,
            ),
            probe_seconds=min(DEFAULT_PROBE_SECONDS, settings.resync_seconds),
        )
        self.remote_secrets: RemoteSecretWatch | None = None
        if settings.remote_secrets:
            self.remote_secrets = remote_secret_watch(settings, make, self.clusters, reports=True)

    def start(self) -> None:
        self.elector.start()
        self.publisher.start()
        if self.istiod_cert is not None:
            self.istiod_cert.start()
        self.clusters.start()
        if self.remote_secrets is not None:
            self.remote_secrets.start(wait_seconds=0)
        log.info("Kubernetes: campaigning for lease as %s", self.elector.identity)

    def stop(self) -> None:
        if self.remote_secrets is not None:
            self.remote_secrets.stop()
        self.clusters.stop()
        if self.istiod_cert is not None:
            self.istiod_cert.stop()
        self.publisher.stop()
        self.elector.stop(release=True)

    def cluster_statuses(self) -> list[ClusterStatus]:
        """Every cluster this CA serves, the own one first (for /v1/ca and /ui)."""
        statuses = self.clusters.statuses()
        if self.remote_secrets is not None and self.remote_secrets.error:
            own = statuses[0] if statuses and statuses[0].local else None
            if own is not None:  # the remote secrets cannot be read: say so on the own row
                statuses[0] = replace(own, error=self.remote_secrets.error)
        return statuses

    def cluster_exposition(self) -> str:
        return cluster_exposition(self.clusters.statuses())

    def is_leader(self) -> bool:
        return self.elector.is_leader()


__all__ = [
    "KubeControllers",
    "build_tokenreview_authenticator",
    "client_factory",
    "key_store",
    "load_or_create_material",
    "tokenreview_authenticator",
]
