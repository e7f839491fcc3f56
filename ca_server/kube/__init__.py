"""Bulwark's CA in Kubernetes: service-account tokens checked by TokenReview, the self-signed
root kept in Secret `istio-ca-secret`, the root bundle published as ConfigMap
`istio-ca-root-cert` in every namespace, and Lease leader election so that only one replica
writes. Each piece takes a lightkube `Client` plus the few values it needs; `wiring` assembles
them for `bulwark ca serve --kubeconfig PATH` (or `--kube-in-cluster`).

Names are imported on first use, so registering the CLI flags (`settings`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ca_server.kube.client import in_cluster_available, load_config, make_client
    from ca_server.kube.errors import KubeApiError, KubeConfigError, KubeError, KubeMaterialError
    from ca_server.kube.leader import LeaderElector
    from ca_server.kube.rootcm import RootCertPublisher
    from ca_server.kube.secret_store import SecretKeyStore
    from ca_server.kube.settings import KubeSettings, LeaseTiming, settings_from_args
    from ca_server.kube.tokenreview import TokenReviewAuthenticator
    from ca_server.kube.wiring import (
        KubeControllers,
        build_tokenreview_authenticator,
        key_store,
        tokenreview_authenticator,
    )

_HOMES = {
    "in_cluster_available": "client",
    "load_config": "client",
    "make_client": "client",
    "KubeApiError": "errors",
    "KubeConfigError": "errors",
    "KubeError": "errors",
    "KubeMaterialError": "errors",
    "LeaderElector": "leader",
    "RootCertPublisher": "rootcm",
    "SecretKeyStore": "secret_store",
    "KubeSettings": "settings",
    "LeaseTiming": "settings",
    "settings_from_args": "settings",
    "TokenReviewAuthenticator": "tokenreview",
    "KubeControllers": "wiring",
    "build_tokenreview_authenticator": "wiring",
    "key_store": "wiring",
    "tokenreview_authenticator": "wiring",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "KubeApiError",
    "KubeConfigError",
    "KubeControllers",
    "KubeError",
    "KubeMaterialError",
    "KubeSettings",
    "LeaderElector",
    "LeaseTiming",
    "RootCertPublisher",
    "SecretKeyStore",
    "TokenReviewAuthenticator",
    "build_tokenreview_authenticator",
    "in_cluster_available",
    "key_store",
    "load_config",
    "make_client",
    "settings_from_args",
    "tokenreview_authenticator",
]
