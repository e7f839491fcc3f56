"""Bulwark's CA in Kubernetes: service-account tokens checked by TokenReview, the self-signed
root kept in Secret `istio-ca-secret`, the root bundle published as ConfigMap
`istio-ca-root-cert` in every namespace, and Lease leader election so that only one replica
writes. Each piece takes a lightkube `Client` plus the few values it needs; `ca_server.kube.
wiring` assembles them for `bulwark ca serve --kubeconfig` (or in-cluster config).
"""

from __future__ import annotations

from ca_server.kube.client import in_cluster_available, load_config, make_client
from ca_server.kube.errors import KubeApiError, KubeConfigError, KubeError, KubeMaterialError
from ca_server.kube.leader import LeaderElector, LeaseTiming
from ca_server.kube.rootcm import RootCertPublisher
from ca_server.kube.secret_store import SecretKeyStore
from ca_server.kube.tokenreview import TokenReviewAuthenticator

__all__ = [
    "KubeApiError",
    "KubeConfigError",
    "KubeError",
    "KubeMaterialError",
    "LeaderElector",
    "LeaseTiming",
    "RootCertPublisher",
    "SecretKeyStore",
    "TokenReviewAuthenticator",
    "in_cluster_available",
    "load_config",
    "make_client",
]
