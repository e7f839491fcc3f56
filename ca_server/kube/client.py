"""Connecting to the API server: a kubeconfig file, or the pod's in-cluster service account.

The CA's gRPC server runs handlers on threads, so the synchronous lightkube client fits:
one call per TokenReview, no event loop to bridge into. lightkube is typed (py.typed), small,
and speaks every resource the CA needs (TokenReview, Secret, ConfigMap, Namespace, Lease).
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import yaml
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

from ca_server.kube.errors import KubeConfigError

FIELD_MANAGER = "bulwark-ca"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def in_cluster_available(service_host: str | None) -> bool:
    """True inside a pod: KUBERNETES_SERVICE_HOST (`KubeSettings.service_host`) is set and the
    service account token is mounted."""
    return bool(service_host) and IN_CLUSTER_TOKEN.exists()


def load_config(
    kubeconfig: Path | None, *, service_host: str | None = None, context: str | None = None
) -> KubeConfig:
    """The kubeconfig file when given, else the in-cluster service account (inside a pod:
    `service_host` is KUBERNETES_SERVICE_HOST)."""
    try:
        if kubeconfig is not None:
            config = _from_file(kubeconfig)
            if context is not None and config.get(context) is None:
                raise KubeConfigError(f"--kubeconfig {kubeconfig} has no context {context!r}")
            return config
        if not in_cluster_available(service_host):
            raise KubeConfigError(
                "--kube-in-cluster needs KUBERNETES_SERVICE_HOST and the mounted token "
                f"{IN_CLUSTER_TOKEN}; outside a pod use --kubeconfig PATH"
            )
        return KubeConfig.from_service_account()
    except LightkubeConfigError as exc:
        source = f"--kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
        raise KubeConfigError(f"cannot use {source}: {exc}") from exc


def _from_file(kubeconfig: Path) -> KubeConfig:
    """The kubeconfig at `kubeconfig`; `KubeConfigError` naming it when it is not one (lightkube
    takes any YAML and fails on what it does not expect with whatever error comes first)."""
    try:
        data = yaml.safe_load(kubeconfig.read_text())
    except OSError as exc:
        raise KubeConfigError(
            f"--kubeconfig {kubeconfig} is not a readable file ({exc.strerror})"
        ) from None
    except yaml.YAMLError:
        raise KubeConfigError(f"--kubeconfig {kubeconfig} is not YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), list):
        raise KubeConfigError(
            f"--kubeconfig {kubeconfig} is not a kubeconfig (no list of clusters)"
        )
    try:
        return KubeConfig.from_dict(data, fname=kubeconfig)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KubeConfigError(
            f"--kubeconfig {kubeconfig} is not a usable kubeconfig ({type(exc).__name__}: {exc})"
        ) from None


def make_client(config: KubeConfig, *, timeout_seconds: float = 10.0) -> Client:
    """A client with bounded timeouts (watches ignore the read timeout)."""
    return Client(
        config=config,
        timeout=httpx2.Timeout(timeout_seconds),
        field_manager=FIELD_MANAGER,
        trust_env=False,
    )


__all__ = ["FIELD_MANAGER", "in_cluster_available", "load_config", "make_client"]
