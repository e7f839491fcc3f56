"""Node-bound impersonation, as Istio's CA allows it (security/pkg/server/ca/node_auth.go).

A trusted node agent (ztunnel) may ask for a workload's certificate only when that workload's
service account has a pod on the agent's own node. The agent's node comes from its token's
pod binding: the TokenReview `extra` `authentication.kubernetes.io/node-name` when the API
server sets it, else the bound pod (name and uid from the token) looked up in the API. The
target's pods are listed with the field selector `spec.nodeName=<node>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx2
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Pod

from ca_server.errors import ImpersonationRefused, UpstreamUnavailable
from ca_server.identity import Caller, shown

_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
T = TypeVar("T")


class KubeNodeAuthorizer:
    """Decides whether `caller` may impersonate `namespace/account`, from the API server."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def authorize(self, caller: Caller, namespace: str, account: str) -> None:
        """Return when allowed; raise ImpersonationRefused (or UpstreamUnavailable) otherwise."""
        node = self.node_of(caller)
        try:
            pods = self._call(
                lambda: list(
                    self._client.list(Pod, namespace=namespace, fields={"spec.nodeName": node})
                )
            )
        except _NotFound:
            pods = []
        for pod in pods:
            spec, status = pod.spec, pod.status
            if spec is None or spec.serviceAccountName != account or spec.nodeName != node:
                continue
            if status is not None and status.phase in _FINISHED_PHASES:
                continue
            return
        raise ImpersonationRefused(
            f"{caller.spiffe_id} may not impersonate {namespace}/{account}: "
            f"that service account has no pod on the caller's node {shown(node, 63)}"
        )

    def node_of(self, caller: Caller) -> str:
        """The node the caller's token is bound to (via its pod), or ImpersonationRefused."""
        if caller.node_name:
            return caller.node_name
        if not caller.pod_name or not caller.pod_uid:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: its token is not bound to a pod "
                "(use a projected service-account token)"
            )
        try:
            pod = self._call(
                lambda: self._client.get(Pod, caller.pod_name, namespace=caller.namespace)
            )
        except _NotFound as exc:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: its pod {shown(caller.pod_name, 63)} no longer exists"
            ) from exc
        metadata, spec = pod.metadata, pod.spec
        if metadata is None or metadata.uid != caller.pod_uid:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: its token's pod was replaced (uid differs)"
            )
        if spec is None or spec.serviceAccountName != caller.service_account or not spec.nodeName:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: its pod runs as another service "
                "account or is not scheduled on a node"
            )
        return spec.nodeName

    @staticmethod
    def _call(fetch: Callable[[], T]) -> T:
        try:
            return fetch()
        except ApiError as exc:
            if exc.status.code == 404:
                raise _NotFound() from exc
            raise UpstreamUnavailable(
                f"node check failed: API server answered {exc.status.code} {exc.status.reason}"
            ) from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(
                f"node check failed: API server unreachable ({type(exc).__name__})"
            ) from exc


class _NotFound(Exception):
    """A 404 from the API server, turned into a refusal by the caller."""
