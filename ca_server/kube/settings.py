"""Kubernetes settings of `bulwark ca serve`: their flags (one table, `KUBE_OPTIONS`) and the
frozen dataclasses they fill.

Each flag has an environment variable, as Istio's deployment sets them; the dataclasses take
their defaults from the flags' documented ones. `settings_from_args` returns None unless
`--kubeconfig` or `--kube-in-cluster` asks for Kubernetes.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ca_server.options import AUTHENTICATION
from certs.cli.options import Option, csv, seconds

# Kept here, free of heavy imports, so `bulwark --help` can register the flags cheaply.
DEFAULT_CLUSTER_ID = "Kubernetes"  # Istio's default CLUSTER_ID
DEFAULT_LEASE_NAME = "bulwark-ca-leader"
CA_SECRET_NAME = "istio-ca-secret"
ROOT_CONFIGMAP_NAME = "istio-ca-root-cert"
# The CA's account in a remote cluster (`bulwark kube create-remote-secret`).
REMOTE_SERVICE_ACCOUNT = "bulwark-ca-remote"
# istiod's Service names: the serving certificate of istiod's XDS port always carries them.
ISTIOD_SERVICE_NAMES = ("istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local")

IN_CLUSTER = Option(
    group=AUTHENTICATION,
    flag="--kube-in-cluster",
    env="BULWARK_KUBE_IN_CLUSTER",
    switch=True,
    help="use Kubernetes with the pod's service account",
)
NAMESPACE = Option(
    group=AUTHENTICATION,
    flag="--kube-namespace",
    env="POD_NAMESPACE",
    default="istio-system",
    help="namespace of the CA Secret and the leader Lease",
)
IDENTITY = Option(
    group=AUTHENTICATION,
    flag="--kube-identity",
    env="POD_NAME",
    default="",
    help="leader-election identity (default: hostname plus a random suffix)",
)
CLUSTER_ID = Option(
    group=AUTHENTICATION,
    flag="--cluster-id",
    env="CLUSTER_ID",
    default=DEFAULT_CLUSTER_ID,
    help="this cluster's ID (istio-agent's ISTIO_META_CLUSTER_ID); a request with no clusterid "
    "is this cluster's, one naming a cluster that is neither this one nor a remote secret's "
    "is refused",
)
CLUSTER_ALIASES = Option(
    group=AUTHENTICATION,
    flag="--cluster-aliases",
    env="BULWARK_CLUSTER_ALIASES",
    default="",
    help="comma-separated ALIAS=CLUSTER pairs: a request naming clusterid ALIAS is served as "
    "cluster CLUSTER (this one or a remote one), as istiod's --clusterAliases",
)
REMOTE_SECRETS = Option(
    group=AUTHENTICATION,
    flag="--kube-remote-secrets",
    env="BULWARK_KUBE_REMOTE_SECRETS",
    default="on",
    choices=("on", "off"),
    convert=lambda value, what: value == "on",
    help="serve the remote clusters of Istio's remote secrets (Secrets labelled "
    "istio/multiCluster=true in --kube-namespace; needs list and watch on secrets there): "
    "their tokens reviewed and nodes checked by their own API servers, root ConfigMaps kept "
    "in them too (docs/MULTICLUSTER.md)",
)
LEASE_DURATION = Option(
    group=AUTHENTICATION,
    flag="--kube-lease-duration",
    env="BULWARK_KUBE_LEASE_DURATION",
    default="15s",
    convert=seconds,
    early=True,
    help="how long a leader may go without renewing before another replica takes over",
)
RESYNC = Option(
    group=AUTHENTICATION,
    flag="--kube-resync",
    env="BULWARK_KUBE_RESYNC",
    default="60s",
    convert=seconds,
    early=True,
    help="time between full checks of every namespace's root ConfigMap (and of istiod's serving certificate)",
)
ISTIOD_CERT_SECRET = Option(
    group=AUTHENTICATION,
    flag="--istiod-cert-secret",
    env="BULWARK_ISTIOD_CERT_SECRET",
    default="",
    help="NAMESPACE/NAME of the kubernetes.io/tls Secret istiod serves XDS with (e.g. istio-system/istiod-tls); the leader issues and renews it at half-life",
)
ISTIOD_CERT_DNS_NAMES = Option(
    group=AUTHENTICATION,
    flag="--istiod-cert-dns-names",
    env="BULWARK_ISTIOD_CERT_DNS_NAMES",
    default="",
    help="comma-separated DNS names for istiod's certificate besides "
    + " and ".join(ISTIOD_SERVICE_NAMES),
)
ISTIOD_CERT_TTL = Option(
    group=AUTHENTICATION,
    flag="--istiod-cert-ttl",
    env="BULWARK_ISTIOD_CERT_TTL",
    default="24h",
    convert=seconds,
    early=True,
    help="lifetime of istiod's serving certificate",
)
# The Kubernetes flags of `ca serve`, in `--help` order (`--kubeconfig` itself is the CA's own).
KUBE_OPTIONS = (
    IN_CLUSTER, NAMESPACE, IDENTITY, CLUSTER_ID, CLUSTER_ALIASES, REMOTE_SECRETS,
    LEASE_DURATION, RESYNC,
    ISTIOD_CERT_SECRET, ISTIOD_CERT_DNS_NAMES, ISTIOD_CERT_TTL,
)  # fmt: skip

# client-go's proportions: a 15 s lease is renewed within 10 s, retried every 2 s.
RENEW_DEADLINE_FRACTION = 2 / 3
RETRY_PERIOD_FRACTION = 2 / 15
_LEASE_SECONDS: float = LEASE_DURATION.default_value


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTiming:
    """How long a leader's lease lasts, by when it must be renewed, how often it is retried."""

    lease_duration: float = _LEASE_SECONDS
    renew_deadline: float = _LEASE_SECONDS * RENEW_DEADLINE_FRACTION
    retry_period: float = _LEASE_SECONDS * RETRY_PERIOD_FRACTION

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("lease timing needs 0 < retry < renew deadline < lease duration")

    @classmethod
    def of(cls, lease_duration: float) -> LeaseTiming:
        """A lease of `lease_duration` seconds with client-go's proportions."""
        return cls(
            lease_duration=lease_duration,
            renew_deadline=lease_duration * RENEW_DEADLINE_FRACTION,
            retry_period=lease_duration * RETRY_PERIOD_FRACTION,
        )


def _default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IstiodCertSettings:
    """Which Secret to keep, for which DNS names, and how long each certificate lives."""

    namespace: str = "istio-system"
    name: str = "istiod-tls"
    dns_names: tuple[str, ...] = ISTIOD_SERVICE_NAMES
    ttl: timedelta = timedelta(seconds=ISTIOD_CERT_TTL.default_value)
    interval_seconds: float = 30.0

    @property
    def location(self) -> str:
        return f"secret {self.namespace}/{self.name}"


def parse_secret_ref(text: str) -> tuple[str, str]:
    """`namespace/name` -> (namespace, name); a ValueError saying what is wrong."""
    namespace, sep, name = text.strip().partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"{text!r} is not NAMESPACE/NAME (e.g. istio-system/istiod-tls)")
    return namespace, name


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeSettings:
    """Where the API server is and how this replica takes part in the cluster."""

    kubeconfig: Path | None  # None: the pod's in-cluster service account
    # KUBERNETES_SERVICE_HOST as the CA started with: set inside a pod (in-cluster only).
    service_host: str | None = None
    namespace: str = NAMESPACE.default_value  # where the CA Secret and the Lease live
    identity: str = field(default_factory=_default_identity)  # Lease holder name (the pod name)
    cluster_id: str = CLUSTER_ID.default_value
    # (alias, cluster) pairs: a request naming the alias is served as that cluster.
    cluster_aliases: tuple[tuple[str, str], ...] = ()
    remote_secrets: bool = REMOTE_SECRETS.default_value  # serve remote secrets' clusters
    lease_name: str = DEFAULT_LEASE_NAME
    lease: LeaseTiming = field(default_factory=LeaseTiming)
    ca_secret_name: str = CA_SECRET_NAME
    root_configmap_name: str = ROOT_CONFIGMAP_NAME
    resync_seconds: float = RESYNC.default_value
    istiod_cert: IstiodCertSettings | None = None  # None: Bulwark does not write istiod-tls

    def __post_init__(self) -> None:
        if not self.namespace or not self.identity:
            raise ValueError(f"{NAMESPACE.flag} and {IDENTITY.flag} must not be empty")
        if not self.cluster_id:
            raise ValueError(f"{CLUSTER_ID.flag} must not be empty")
        if self.resync_seconds <= 0:
            raise ValueError(f"{RESYNC.flag} must be positive")


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


def istiod_cert_from_args(args: argparse.Namespace, resync: float) -> IstiodCertSettings | None:
    """`--istiod-cert-*` as settings, None when `--istiod-cert-secret` is empty."""
    ref = ISTIOD_CERT_SECRET.value(args)
    if not ref:
        return None
    try:
        namespace, name = parse_secret_ref(ref)
    except ValueError as exc:
        raise ValueError(f"{ISTIOD_CERT_SECRET.flag}: {exc}") from None
    extra = csv(ISTIOD_CERT_DNS_NAMES.value(args), ISTIOD_CERT_DNS_NAMES.what)
    for dns in extra:
        if not _DNS_NAME.match(dns):
            raise ValueError(f"{ISTIOD_CERT_DNS_NAMES.flag}: {dns!r} is not a lowercase DNS name")
    ttl: float = ISTIOD_CERT_TTL.value(args)
    if not 3600 <= ttl <= 90 * 86400:
        raise ValueError(f"{ISTIOD_CERT_TTL.flag} must be between 1h and 90d")
    names = tuple(dict.fromkeys((*ISTIOD_SERVICE_NAMES, *extra)))
    return IstiodCertSettings(
        namespace=namespace,
        name=name,
        dns_names=names,
        ttl=timedelta(seconds=ttl),
        interval_seconds=resync,
    )


def own_cluster_id(settings: KubeSettings | None) -> str:
    """The CA's cluster ID: --cluster-id with Kubernetes, Istio's default without."""
    return settings.cluster_id if settings is not None else DEFAULT_CLUSTER_ID


def parse_cluster_aliases(text: str) -> tuple[tuple[str, str], ...]:
    """`a=b,c=d` as ((a, b), (c, d)); a ValueError naming the flag and the bad item."""
    pairs: dict[str, str] = {}
    for item in csv(text, CLUSTER_ALIASES.what):
        alias, sep, cluster = (part.strip() for part in item.partition("="))
        if not sep or not alias or not cluster or alias == cluster:
            raise ValueError(f"{CLUSTER_ALIASES.flag}: {item!r} is not ALIAS=CLUSTER")
        if alias in pairs:
            raise ValueError(f"{CLUSTER_ALIASES.flag}: alias {alias!r} is given twice")
        pairs[alias] = cluster
    return tuple(pairs.items())


def settings_from_args(args: argparse.Namespace, kubeconfig: Path | None) -> KubeSettings | None:
    """The Kubernetes settings of the parsed `ca serve` flags; None without `kubeconfig` or
    `--kube-in-cluster`."""
    if kubeconfig is None and not IN_CLUSTER.value(args):
        if ISTIOD_CERT_SECRET.value(args):
            raise ValueError(f"{ISTIOD_CERT_SECRET.flag} needs --kubeconfig or {IN_CLUSTER.flag}")
        return None
    try:
        timing = LeaseTiming.of(LEASE_DURATION.value(args))
    except ValueError as exc:
        raise ValueError(f"{LEASE_DURATION.flag}: {exc}") from exc
    resync: float = RESYNC.value(args)
    return KubeSettings(
        kubeconfig=kubeconfig,
        service_host=os.environ.get("KUBERNETES_SERVICE_HOST"),
        namespace=NAMESPACE.value(args),
        identity=IDENTITY.value(args) or _default_identity(),
        cluster_id=CLUSTER_ID.value(args),
        cluster_aliases=parse_cluster_aliases(CLUSTER_ALIASES.value(args)),
        remote_secrets=REMOTE_SECRETS.value(args),
        lease=timing,
        resync_seconds=resync,
        istiod_cert=istiod_cert_from_args(args, resync),
    )


__all__ = [
    "CA_SECRET_NAME",
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_LEASE_NAME",
    "ISTIOD_SERVICE_NAMES",
    "KUBE_OPTIONS",
    "REMOTE_SERVICE_ACCOUNT",
    "ROOT_CONFIGMAP_NAME",
    "IstiodCertSettings",
    "KubeSettings",
    "LeaseTiming",
    "settings_from_args",
]
