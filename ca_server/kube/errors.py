"""Errors of the Kubernetes integration.

    KubeError                       root of this package's errors
    ├── KubeConfigError             no usable kubeconfig / in-cluster config (also a ConfigError:
    │                               the CA cannot start)
    └── KubeApiError                the API server failed or refused a call the CA needs
        └── KubeMaterialError       `istio-ca-secret` exists but is malformed

Request-path failures use the CA's own tree instead: a rejected token is
`ca_server.errors.AuthenticationError`, an unreachable API server during a request is
`ca_server.errors.UpstreamUnavailable` (retryable by Istio's client).
"""

from __future__ import annotations

from ca_server.errors import ConfigError


class KubeError(Exception):
    """Root of the Kubernetes integration's errors; messages never carry tokens or keys."""


class KubeConfigError(KubeError, ConfigError):
    """The CA was asked to use Kubernetes but has no usable configuration."""


class KubeApiError(KubeError):
    """A call to the API server failed; the message names the call and the status."""


class KubeMaterialError(KubeApiError):
    """The CA Secret exists but does not hold a consistent certificate and key."""


__all__ = ["KubeApiError", "KubeConfigError", "KubeError", "KubeMaterialError"]
