"""What `bulwark kube create-remote-secret` does in a remote cluster, and the Secret it prints.

In the remote cluster (the one whose workloads the CA will serve):
1. the namespace (istio-system) and a service account in it, created unless they exist;
2. a ClusterRole with what the CA needs there, and its binding to that account (applied, so a
   re-run brings an older role up to date):
       tokenreviews  create                          review its workloads' tokens
       pods          get, list, watch                the node check of impersonation
       configmaps    get, list, watch, create, update   istio-ca-root-cert in each namespace
       namespaces    get, list, watch                which namespaces to write it into
3. a `kubernetes.io/service-account-token` Secret for the account (an existing one is
   reused), then a wait until the token controller has filled in its token and CA.

The result is the remote secret for the CA's cluster, in the shape `istioctl
create-remote-secret` writes (label `istio/multiCluster: "true"`, annotation
`networking.istio.io/cluster`, one `stringData` key: the cluster ID, holding a kubeconfig
whose cluster, context and user are all named after the cluster, with the bearer token), so
Bulwark and istiod read either tool's secret.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import Namespace, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

from ca_server.kube.client import FIELD_MANAGER
from ca_server.kube.errors import KubeApiError
from ca_server.kube.remote_secrets import (
    CLUSTER_ANNOTATION,
    MULTICLUSTER_LABEL,
    REMOTE_SECRET_PREFIX,
)
from ca_server.kube.settings import REMOTE_SERVICE_ACCOUNT

# A service-account token Secret holds the API server's CA under the same key as a TLS Secret.
from certs.istio_files import TLS_CA as TOKEN_SECRET_CA

T = TypeVar("T")
DEFAULT_SERVICE_ACCOUNT = REMOTE_SERVICE_ACCOUNT
TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
# What the CA does in a remote cluster (module docstring).
REMOTE_RULES = (
    PolicyRule(apiGroups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]),
    PolicyRule(apiGroups=[""], resources=["pods"], verbs=["get", "list", "watch"]),
    PolicyRule(
        apiGroups=[""],
        resources=["configmaps"],
        verbs=["get", "list", "watch", "create", "update"],
    ),
    PolicyRule(apiGroups=[""], resources=["namespaces"], verbs=["get", "list", "watch"]),
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_cluster_name(name: str) -> str:
    """A cluster ID for a remote secret: a DNS-1123 label, as istioctl requires (it names the
    Secret `istio-remote-secret-<name>`)."""
    if not _DNS_LABEL.match(name):
        raise ValueError(
            f"--name {name!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "at most 63 characters)"
        )
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteAccess:
    """Where in the remote cluster the CA's account lives."""

    namespace: str = "istio-system"
    service_account: str = DEFAULT_SERVICE_ACCOUNT

    @property
    def role_name(self) -> str:
        # Cluster-scoped, so it carries the namespace (two installs never share one).
        return f"{self.service_account}-{self.namespace}"[:63].rstrip("-")

    @property
    def token_secret_name(self) -> str:
        return f"{self.service_account}-token"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceAccountToken:
    token: str
    ca_pem: bytes


def cluster_uid(client: Client) -> str:
    """The kube-system namespace's UID: istioctl's cluster name when none is given."""
    found = _must("reading namespace kube-system", lambda: client.get(Namespace, "kube-system"))
    uid = found.metadata.uid if found.metadata else None
    if not uid:
        raise KubeApiError("namespace kube-system has no uid")
    return uid


def grant(client: Client, access: RemoteAccess) -> None:
    """Steps 1 and 2 of the module docstring."""
    ns, sa = access.namespace, access.service_account
    _create_unless_exists(
        f"creating namespace {ns}", lambda: client.create(Namespace(metadata=ObjectMeta(name=ns)))
    )
    _create_unless_exists(
        f"creating service account {ns}/{sa}",
        lambda: client.create(ServiceAccount(metadata=ObjectMeta(name=sa, namespace=ns))),
    )
    role = ClusterRole(metadata=ObjectMeta(name=access.role_name), rules=list(REMOTE_RULES))
    binding = ClusterRoleBinding(
        metadata=ObjectMeta(name=access.role_name),
        roleRef=RoleRef(
            apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=access.role_name
        ),
        subjects=[Subject(kind="ServiceAccount", name=sa, namespace=ns)],
    )
    _call(
        f"applying ClusterRole {access.role_name}",
        lambda: client.apply(role, field_manager=FIELD_MANAGER, force=True),
    )
    _call(
        f"applying ClusterRoleBinding {access.role_name}",
        lambda: client.apply(binding, field_manager=FIELD_MANAGER, force=True),
    )


def token_secret(client: Client, access: RemoteAccess) -> Secret:
    """Step 3's Secret: an existing token Secret of the account, else a new one."""
    ns, sa = access.namespace, access.service_account
    existing = _must(f"listing secrets in {ns}", lambda: list(client.list(Secret, namespace=ns)))
    for secret in sorted(existing, key=lambda s: (s.metadata.name if s.metadata else "") or ""):
        annotations = (secret.metadata.annotations if secret.metadata else None) or {}
        if secret.type == TOKEN_TYPE and annotations.get(SA_NAME_ANNOTATION) == sa:
            return secret
    fresh = Secret(
        metadata=ObjectMeta(
            name=access.token_secret_name, namespace=ns, annotations={SA_NAME_ANNOTATION: sa}
        ),
        type=TOKEN_TYPE,
    )
    return _must(f"creating secret {ns}/{access.token_secret_name}", lambda: client.create(fresh))


def wait_for_token(
    client: Client,
    secret: Secret,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> ServiceAccountToken:
    """The token and CA the token controller writes into `secret`, once it has."""
    assert secret.metadata is not None and secret.metadata.name and secret.metadata.namespace
    name, ns = secret.metadata.name, secret.metadata.namespace
    deadline = time.monotonic() + timeout
    while True:
        data = secret.data or {}
        if data.get("token") and data.get(TOKEN_SECRET_CA):
            return ServiceAccountToken(
                token=base64.b64decode(data["token"]).decode("ascii"),
                ca_pem=base64.b64decode(data[TOKEN_SECRET_CA]),
            )
        if time.monotonic() >= deadline:
            raise KubeApiError(
                f"secret {ns}/{name} got no token within {timeout:.0f} s: is the cluster's "
                "token controller (kube-controller-manager) running?"
            )
        sleep(0.5)
        secret = _must(
            f"reading secret {ns}/{name}", lambda: client.get(Secret, name, namespace=ns)
        )


def kubeconfig_for(cluster_id: str, server: str, token: ServiceAccountToken) -> dict[str, Any]:
    """A bearer-token kubeconfig whose cluster, context and user are named `cluster_id`."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_id,
                "cluster": {
                    "certificate-authority-data": base64.b64encode(token.ca_pem).decode(),
                    "server": server,
                },
            }
        ],
        "contexts": [{"name": cluster_id, "context": {"cluster": cluster_id, "user": cluster_id}}],
        "current-context": cluster_id,
        "preferences": {},
        "users": [{"name": cluster_id, "user": {"token": token.token}}],
    }


def remote_secret(cluster_id: str, kubeconfig_yaml: str, *, namespace: str) -> dict[str, Any]:
    """The Secret for the CA's cluster, as `istioctl create-remote-secret` shapes it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "annotations": {CLUSTER_ANNOTATION: cluster_id},
            "labels": {MULTICLUSTER_LABEL: "true"},
            "name": REMOTE_SECRET_PREFIX + cluster_id,
            "namespace": namespace,
        },
        "stringData": {cluster_id: kubeconfig_yaml},
    }


def _call(what: str, fetch: Callable[[], T], *, tolerate: int | None = None) -> T | None:
    """`fetch()`, its failures as one `KubeApiError` line; None for a `tolerate`d status."""
    try:
        return fetch()
    except ApiError as exc:
        if exc.status.code == tolerate:
            return None
        raise KubeApiError(f"{what}: {exc.status.code} {exc.status.reason}") from exc
    except httpx2.HTTPError as exc:
        raise KubeApiError(f"{what}: API server unreachable ({type(exc).__name__})") from exc


def _must(what: str, fetch: Callable[[], T]) -> T:
    found = _call(what, fetch)
    assert found is not None
    return found


def _create_unless_exists(what: str, create: Callable[[], Any]) -> None:
    _call(what, create, tolerate=409)


__all__ = [
    "DEFAULT_SERVICE_ACCOUNT",
    "REMOTE_RULES",
    "RemoteAccess",
    "ServiceAccountToken",
    "check_cluster_name",
    "cluster_uid",
    "grant",
    "kubeconfig_for",
    "remote_secret",
    "token_secret",
    "wait_for_token",
]
