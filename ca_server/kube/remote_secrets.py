"""Remote secrets in Istio's format (docs/COMPATIBILITY.md §4, Multicluster): what they hold.

A remote secret is a Secret in the CA's namespace labelled `istio/multiCluster: "true"`. Each
data key is a cluster ID and its value a kubeconfig for that cluster's API server, usually
with a service account's bearer token (`istioctl create-remote-secret` and `bulwark kube
create-remote-secret` both write it so, with the annotation `networking.istio.io/cluster`
naming the cluster). As istiod does, the data keys name the clusters; the annotation is
checked against them and a disagreement is reported, never silently preferred.

A kubeconfig is accepted only when it names its API server and its credentials inline:
like istiod (`sanitizeKubeConfig`), Bulwark refuses the parts that would run a program or read
the CA's own files on a Secret writer's behalf (`exec`, `auth-provider`, `tokenFile`,
`client-certificate`, `client-key`), and the ones its client cannot honour (`tls-server-name`,
`proxy-url`). Nothing here talks to an API server; every problem is a `RemoteSecretError`
whose message never carries a token or key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

import yaml
from lightkube import KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from lightkube.resources.core_v1 import Secret

MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"
REMOTE_SECRET_PREFIX = "istio-remote-secret-"  # istioctl's name: istio-remote-secret-<cluster>
# Parts of a kubeconfig user Bulwark refuses (istiod refuses the same by default).
_REFUSED_USER_KEYS = ("exec", "auth-provider", "tokenFile", "client-certificate", "client-key")
_UNSUPPORTED_CLUSTER_KEYS = ("tls-server-name", "proxy-url")


class RemoteSecretError(ValueError):
    """A remote secret's kubeconfig is unusable; the message says which part and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteCluster:
    """One cluster as one remote secret describes it (usable or not)."""

    cluster_id: str
    secret: str  # "namespace/name" of the Secret that holds it
    digest: str  # SHA-256 of the kubeconfig bytes: a changed Secret is a changed cluster
    server: str = ""  # the API server URL, when the kubeconfig names one
    config: KubeConfig | None = None  # None when `error` says why it is unusable
    error: str = ""

    @property
    def usable(self) -> bool:
        return self.config is not None


def is_remote_secret(secret: Secret) -> bool:
    labels = (secret.metadata.labels if secret.metadata else None) or {}
    return labels.get(MULTICLUSTER_LABEL) == "true"


def secret_key(secret: Secret) -> str:
    meta = secret.metadata
    return f"{meta.namespace}/{meta.name}" if meta is not None else "?/?"


def clusters_of(secret: Secret) -> tuple[list[RemoteCluster], list[str]]:
    """The clusters a remote secret names (one per data key), and notes about the Secret
    (an annotation naming a cluster the data does not hold). `stringData` never comes back
    from the API server: `data` holds each value as base64 text."""
    where = secret_key(secret)
    clusters = [
        remote_cluster(cluster_id, _decoded(value), secret=where)
        for cluster_id, value in sorted((secret.data or {}).items())
    ]
    notes: list[str] = []
    annotations = (secret.metadata.annotations if secret.metadata else None) or {}
    named = annotations.get(CLUSTER_ANNOTATION)
    if named and clusters and named not in {c.cluster_id for c in clusters}:
        keys = ", ".join(repr(c.cluster_id) for c in clusters)
        notes.append(
            f"remote secret {where} is annotated {CLUSTER_ANNOTATION}={named!r} but its data "
            f"names {keys}; the data keys name the clusters (as in istiod)"
        )
    if not clusters:
        notes.append(f"remote secret {where} holds no kubeconfig (no data keys)")
    return clusters, notes


def remote_cluster(cluster_id: str, kubeconfig: bytes, *, secret: str) -> RemoteCluster:
    """One data entry of a remote secret, parsed; unusable ones carry their error."""
    digest = hashlib.sha256(kubeconfig).hexdigest()
    try:
        raw = load_kubeconfig(kubeconfig)
        server = server_of(raw)
        config = KubeConfig.from_dict(raw)
        config.get()  # resolves the current context: a missing cluster or user fails here
    except RemoteSecretError as exc:
        return RemoteCluster(cluster_id=cluster_id, secret=secret, digest=digest, error=str(exc))
    except (LightkubeConfigError, KeyError, TypeError, ValueError) as exc:
        error = f"kubeconfig is not usable ({type(exc).__name__})"
        return RemoteCluster(cluster_id=cluster_id, secret=secret, digest=digest, error=error)
    return RemoteCluster(
        cluster_id=cluster_id, secret=secret, digest=digest, server=server, config=config
    )


def load_kubeconfig(data: bytes) -> dict[str, Any]:
    """A kubeconfig's YAML as a mapping, checked by the rules of the module docstring."""
    if not data.strip():
        raise RemoteSecretError("kubeconfig is empty")
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError:
        raise RemoteSecretError("kubeconfig is not YAML") from None
    if not isinstance(raw, dict):
        raise RemoteSecretError("kubeconfig is not a YAML mapping")
    for section in ("clusters", "contexts", "users"):
        entries = raw.get(section) or []
        if not isinstance(entries, list) or not all(_named_entry(e) for e in entries):
            raise RemoteSecretError(f"kubeconfig {section} must be a list of named entries")
    if not raw.get("current-context"):
        raise RemoteSecretError("kubeconfig has no current-context")
    for entry in raw.get("users") or []:
        user = entry.get("user") or {}
        refused = [key for key in _REFUSED_USER_KEYS if user.get(key)]
        if refused:
            raise RemoteSecretError(
                f"kubeconfig user {entry['name']!r} uses {', '.join(refused)}, which Bulwark "
                "refuses in a remote secret (inline token or client-certificate-data only)"
            )
    for entry in raw.get("clusters") or []:
        cluster = entry.get("cluster") or {}
        unsupported = [key for key in _UNSUPPORTED_CLUSTER_KEYS if cluster.get(key)]
        if unsupported:
            raise RemoteSecretError(
                f"kubeconfig cluster {entry['name']!r} sets {', '.join(unsupported)}, which "
                "Bulwark's client does not support"
            )
    return raw


def server_of(raw: dict[str, Any]) -> str:
    """The API server URL of the current context; it must be https."""
    context_name = raw["current-context"]
    contexts = {e["name"]: e.get("context") or {} for e in raw.get("contexts") or []}
    if context_name not in contexts:
        raise RemoteSecretError(f"kubeconfig current-context {context_name!r} is not defined")
    cluster_name = contexts[context_name].get("cluster")
    clusters = {e["name"]: e.get("cluster") or {} for e in raw.get("clusters") or []}
    if cluster_name not in clusters:
        raise RemoteSecretError(f"kubeconfig context {context_name!r} names no defined cluster")
    server = clusters[cluster_name].get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise RemoteSecretError(
            f"kubeconfig cluster {cluster_name!r} needs an https:// server (the token would "
            "otherwise travel in clear)"
        )
    return server


def _named_entry(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("name"), str)


def _decoded(value: str) -> bytes:
    """A Secret's data value (base64 text) as bytes; undecodable is empty."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


__all__ = [
    "CLUSTER_ANNOTATION",
    "MULTICLUSTER_LABEL",
    "REMOTE_SECRET_PREFIX",
    "RemoteCluster",
    "RemoteSecretError",
    "clusters_of",
    "is_remote_secret",
    "load_kubeconfig",
    "remote_cluster",
    "secret_key",
]
