"""Node-bound impersonation, as Istio's CA allows it (security/pkg/server/ca/node_auth.go).

A trusted node agent (ztunnel, Bulwark's node agent) may ask for a workload's certificate
only when that workload's service account has an unfinished pod on the agent's own node.
The agent's node comes from its token's pod binding: the TokenReview `extra`
`authentication.kubernetes.io/node-name` when the API server sets it, else the bound pod
(uid from the token) as the pod cache knows it. Both questions are answered from the
watch-backed `PodCache` (pod_cache.py), never by a request to the API server, and not at
all (`UpstreamUnavailable`) while the cache is not synced.
"""

from __future__ import annotations

from ca_server.errors import ImpersonationRefused
from ca_server.identity import Caller, shown
from ca_server.kube.pod_cache import PodCache


class KubeNodeAuthorizer:
    """Decides whether `caller` may impersonate `namespace/account`, from the pod cache."""

    def __init__(self, pods: PodCache) -> None:
        self._pods = pods

    def authorize(self, caller: Caller, namespace: str, account: str) -> None:
        """Return when allowed; raise ImpersonationRefused (or UpstreamUnavailable) otherwise."""
        node = self.node_of(caller)
        if self._pods.has_pod_on(node, namespace, account):
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
        pod = self._pods.pod(caller.pod_uid)
        if pod is None or pod.namespace != caller.namespace or pod.name != caller.pod_name:
            if self._pods.uid_of(caller.namespace, caller.pod_name) is not None:
                raise ImpersonationRefused(
                    f"{caller.spiffe_id} may not impersonate: its token's pod was replaced "
                    "(uid differs)"
                )
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: its pod "
                f"{shown(caller.pod_name, 63)} no longer exists"
            )
        if pod.service_account != caller.service_account or not pod.node:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not impersonate: its pod runs as another service "
                "account or is not scheduled on a node"
            )
        return pod.node
