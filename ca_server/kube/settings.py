"""Kubernetes settings of `bulwark ca serve`: one frozen dataclass, and the flags that fill it.

`add_flags` registers the flags (each with an environment variable, as Istio's deployment
sets them); `settings_from_args` returns None unless `--kubeconfig` or `--kube-in-cluster`
asks for Kubernetes.
"""

from __future__ import annotations

import argparse
import re
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from certs.cli.envflags import duration_seconds, env_bool, env_flag

# Kept here, free of heavy imports, so `bulwark --help` can register the flags cheaply.
DEFAULT_CLUSTER_ID = "Kubernetes"  # Istio's default CLUSTER_ID
DEFAULT_LEASE_NAME = "bulwark-ca-leader"
CA_SECRET_NAME = "istio-ca-secret"
ROOT_CONFIGMAP_NAME = "istio-ca-root-cert"
# istiod's Service names: the serving certificate of istiod's XDS port always carries them.
ISTIOD_SERVICE_NAMES = ("istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTiming:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s between attempts."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("lease timing needs 0 < retry < renew deadline < lease duration")


def _default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IstiodCertSettings:
    """Which Secret to keep, for which DNS names, and how long each certificate lives."""

    namespace: str = "istio-system"
    name: str = "istiod-tls"
    dns_names: tuple[str, ...] = ISTIOD_SERVICE_NAMES
    ttl: timedelta = timedelta(hours=24)
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
    namespace: str = "istio-system"  # where the CA Secret and the Lease live
    identity: str = field(default_factory=_default_identity)  # Lease holder name (the pod name)
    cluster_id: str = DEFAULT_CLUSTER_ID
    lease_name: str = DEFAULT_LEASE_NAME
    lease: LeaseTiming = field(default_factory=LeaseTiming)
    ca_secret_name: str = CA_SECRET_NAME
    root_configmap_name: str = ROOT_CONFIGMAP_NAME
    resync_seconds: float = 60.0
    istiod_cert: IstiodCertSettings | None = None  # None: Bulwark does not write istiod-tls

    def __post_init__(self) -> None:
        if not self.namespace or not self.identity:
            raise ValueError("--kube-namespace and --kube-identity must not be empty")
        if self.resync_seconds <= 0:
            raise ValueError("--kube-resync must be positive")


def add_flags(p: argparse.ArgumentParser | Any) -> None:
    """The Kubernetes flags of `bulwark ca serve` (`--kubeconfig` itself is the CA's own)."""
    p.add_argument(
        "--kube-in-cluster",
        action="store_true",
        default=env_bool("BULWARK_KUBE_IN_CLUSTER"),
        help="use Kubernetes with the pod's service account (env BULWARK_KUBE_IN_CLUSTER)",
    )
    env_flag(
        p,
        "--kube-namespace",
        "POD_NAMESPACE",
        default="istio-system",
        help="namespace of the CA Secret and the leader Lease",
    )
    env_flag(
        p,
        "--kube-identity",
        "POD_NAME",
        default="",
        help="leader-election identity (default: hostname plus a random suffix)",
    )
    env_flag(
        p,
        "--cluster-id",
        "CLUSTER_ID",
        default=DEFAULT_CLUSTER_ID,
        help="this cluster's ID; requests naming another clusterid are refused",
    )
    env_flag(
        p,
        "--kube-lease-duration",
        "BULWARK_KUBE_LEASE_DURATION",
        default="15s",
        type=duration_seconds("--kube-lease-duration (env BULWARK_KUBE_LEASE_DURATION)"),
        help="how long a leader may go without renewing before another replica takes over",
    )
    env_flag(
        p,
        "--kube-resync",
        "BULWARK_KUBE_RESYNC",
        default="60s",
        type=duration_seconds("--kube-resync (env BULWARK_KUBE_RESYNC)"),
        help="time between full checks of every namespace's root ConfigMap (and of istiod's "
        "serving certificate)",
    )
    _istiod_flags(p)


def _istiod_flags(p: argparse.ArgumentParser | Any) -> None:
    env_flag(
        p,
        "--istiod-cert-secret",
        "BULWARK_ISTIOD_CERT_SECRET",
        default="",
        help="NAMESPACE/NAME of the kubernetes.io/tls Secret istiod serves XDS with (e.g. "
        "istio-system/istiod-tls); the leader issues and renews it at half-life",
    )
    env_flag(
        p,
        "--istiod-cert-dns-names",
        "BULWARK_ISTIOD_CERT_DNS_NAMES",
        default="",
        help="comma-separated DNS names for istiod's certificate besides "
        + " and ".join(ISTIOD_SERVICE_NAMES),
    )
    env_flag(
        p,
        "--istiod-cert-ttl",
        "BULWARK_ISTIOD_CERT_TTL",
        default="24h",
        type=duration_seconds("--istiod-cert-ttl (env BULWARK_ISTIOD_CERT_TTL)"),
        help="lifetime of istiod's serving certificate",
    )


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


def istiod_cert_from_args(args: argparse.Namespace, resync: float) -> IstiodCertSettings | None:
    """`--istiod-cert-*` as settings, None when `--istiod-cert-secret` is empty."""
    ref = str(getattr(args, "istiod_cert_secret", "") or "")
    if not ref:
        return None
    try:
        namespace, name = parse_secret_ref(ref)
    except ValueError as exc:
        raise ValueError(f"--istiod-cert-secret: {exc}") from None
    extra = [d.strip() for d in str(args.istiod_cert_dns_names or "").split(",") if d.strip()]
    for dns in extra:
        if not _DNS_NAME.match(dns):
            raise ValueError(f"--istiod-cert-dns-names: {dns!r} is not a lowercase DNS name")
    ttl = float(args.istiod_cert_ttl)
    if not 3600 <= ttl <= 90 * 86400:
        raise ValueError("--istiod-cert-ttl must be between 1h and 90d")
    names = tuple(dict.fromkeys((*ISTIOD_SERVICE_NAMES, *extra)))
    return IstiodCertSettings(
        namespace=namespace,
        name=name,
        dns_names=names,
        ttl=timedelta(seconds=ttl),
        interval_seconds=resync,
    )


def settings_from_args(args: argparse.Namespace) -> KubeSettings | None:
    kubeconfig = Path(args.kubeconfig) if getattr(args, "kubeconfig", None) else None
    if kubeconfig is None and not args.kube_in_cluster:
        if getattr(args, "istiod_cert_secret", ""):
            raise ValueError("--istiod-cert-secret needs --kubeconfig or --kube-in-cluster")
        return None
    duration = float(args.kube_lease_duration)
    try:
        timing = LeaseTiming(
            lease_duration=duration, renew_deadline=duration * 2 / 3, retry_period=duration * 2 / 15
        )
    except ValueError as exc:
        raise ValueError(f"--kube-lease-duration: {exc}") from exc
    return KubeSettings(
        kubeconfig=kubeconfig,
        namespace=args.kube_namespace,
        identity=args.kube_identity or _default_identity(),
        cluster_id=args.cluster_id,
        lease=timing,
        resync_seconds=float(args.kube_resync),
        istiod_cert=istiod_cert_from_args(args, float(args.kube_resync)),
    )


__all__ = [
    "CA_SECRET_NAME",
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_LEASE_NAME",
    "ISTIOD_SERVICE_NAMES",
    "ROOT_CONFIGMAP_NAME",
    "IstiodCertSettings",
    "KubeSettings",
    "LeaseTiming",
    "add_flags",
    "settings_from_args",
]
