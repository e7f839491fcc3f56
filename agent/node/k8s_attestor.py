"""The `k8s` attestor: the caller's pid -> its cgroup -> pod UID and container ID -> the pod.

As SPIRE's k8s workload attestor does (docs/COMPATIBILITY.md §4), but from this node agent's
own watch of the pods bound to its node (`agent.node.pods`), never a request per connection.
A caller is served only if its pod runs on this node and the pod's status lists the
container the process runs in; hostNetwork and hostPID pods only with `--allow-host-pods`.
The identity is the pod's service account, Istio's model: `spiffe://<td>/ns/<ns>/sa/<sa>`.
Anything else is PERMISSION_DENIED naming what was found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.logs import printable
from agent.node.attestation import Attestation
from agent.node.cgroups import AmbiguousCgroup, PodContainer, cgroup_paths, pod_container
from agent.node.errors import CallerChanged, CallerGone, NotAttested
from agent.node.kube_api import KubeApi, KubeApiError
from agent.node.pods import PodCache, PodInfo
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.node.peer import PeerProcess


class K8sAttestor:
    """Attests callers against the pods of one node."""

    name = "k8s"
    holders_are_processes = False

    def __init__(
        self,
        pods: PodCache,
        *,
        trust_domain: TrustDomain,
        allow_host_pods: bool,
        attest_timeout: float,
    ) -> None:
        self.pods = pods
        self._trust_domain = trust_domain
        self._allow_host_pods = allow_host_pods
        self._timeout = attest_timeout

    @classmethod
    def from_config(
        cls, config: AgentConfig, *, on_holder_gone: Callable[[str, str], None]
    ) -> K8sAttestor:
        if config.kubeconfig is not None:
            api = KubeApi.from_kubeconfig(config.kubeconfig)
        else:
            api = KubeApi.in_cluster(config.kube_service_host, config.kube_service_port)
        return cls(
            PodCache(api, config.node_name, on_gone=on_holder_gone),
            trust_domain=TrustDomain(config.trust_domain),
            allow_host_pods=config.allow_host_pods,
            attest_timeout=config.attest_timeout.total_seconds(),
        )

    async def start(self) -> None:
        """List the node's pods once before serving; if the API server fails, `run` retries
        and callers wait (up to the attestation timeout) for their pods."""
        try:
            await self.pods.sync()
        except KubeApiError as exc:
            self.pods.problem = str(exc)

    async def run(self) -> None:
        await self.pods.run()

    def not_ready(self) -> str:
        return "" if self.pods.synced else self.pods.problem

    async def close(self) -> None:
        """The watch ends with its task."""

    async def attest(self, peer: PeerProcess) -> Attestation:
        located = self._locate(peer)
        pod = await self.pods.wait_for(located.pod_uid, located.container_id, self._timeout)
        if pod is None:
            raise NotAttested(self._why_not(peer, located))
        if (pod.host_network or pod.host_pid) and not self._allow_host_pods:
            shared = "network" if pod.host_network else "pid"
            raise NotAttested(
                f"pid {peer.pid} runs in pod {pod.namespace}/{pod.name}, which shares the node's "
                f"{shared} namespace; such pods are served only with --allow-host-pods"
            )
        try:
            spiffe_id = SpiffeId.for_service_account(
                self._trust_domain, pod.namespace, pod.service_account
            )
        except InvalidSpiffeId as exc:
            raise NotAttested(
                f"pod {pod.namespace}/{pod.name} has no usable identity: {exc}"
            ) from None
        return Attestation(
            spiffe_id=spiffe_id,
            holder=pod.holder,
            holder_name=f"{pod.namespace}/{pod.name}",
            facts=(located.pod_uid, located.container_id),
        )

    def recheck(self, peer: PeerProcess, attestation: Attestation) -> None:
        try:
            located = pod_container(peer.read("cgroup").decode(errors="replace"))
        except AmbiguousCgroup as exc:
            raise CallerChanged(f"pid {peer.pid}: {exc}") from None
        if located != PodContainer(*attestation.facts):
            where = (
                f"container {located.container_id[:12]} of pod uid {located.pod_uid}"
                if located
                else "no pod"
            )
            raise CallerChanged(
                f"pid {peer.pid} connected from {attestation.holder_name} and is now in {where}; "
                "reconnect"
            )
        pod = self.pods.get(located.pod_uid)
        if pod is None or not pod.running:
            raise CallerGone(f"pod {attestation.holder_name} no longer runs on this node")

    def _locate(self, peer: PeerProcess) -> PodContainer:
        cgroup = peer.read("cgroup").decode(errors="replace")
        try:
            located = pod_container(cgroup)
        except AmbiguousCgroup as exc:
            raise NotAttested(f"pid {peer.pid} (uid {peer.uid}): {exc}") from None
        if located is None:
            paths = ", ".join(printable(p, 120) for p in cgroup_paths(cgroup)[:4]) or "none"
            raise NotAttested(
                f"pid {peer.pid} (uid {peer.uid}) is not in a Kubernetes pod: its cgroup is {paths}"
            )
        return located

    def _why_not(self, peer: PeerProcess, located: PodContainer) -> str:
        pod: PodInfo | None = self.pods.get(located.pod_uid)
        where = f"pid {peer.pid} runs in container {located.container_id[:12]} of pod uid {located.pod_uid}"
        if pod is None:
            if not self.pods.synced:
                return f"{where}; the node's pods cannot be listed yet ({self.pods.problem})"
            return f"{where}, which is not a pod of node {self.pods.node}"
        name = f"{pod.namespace}/{pod.name}"
        if not pod.running:
            return f"{where}: pod {name} is {pod.phase}, not Running"
        return f"{where}: pod {name} does not list that container in its status"
