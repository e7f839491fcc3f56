"""The pods bound to this node, from one list and watch (`spec.nodeName=<node>`), never a request
per connection.

The cache holds what attestation needs of each pod: its service account, phase, the IDs of
its containers (`status.containerStatuses[].containerID` without the `containerd://`,
`cri-o://` or `docker://` prefix) and whether it shares the node's network or pid namespace.
A pod that is deleted, finishes (Succeeded, Failed) or stops being bound to this node leaves:
`on_gone(holder, why)` is called at once, so its connections close and its identity is freed
if it was the last holder. The watch resumes from the last resource version, re-lists after
`410 Gone` (then every pod that vanished meanwhile leaves), and retries with backoff while the
API server cannot be reached (the pods known so far stay attestable).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from agent.logs import printable
from agent.node.kube_api import KubeApi, KubeApiError

log = logging.getLogger(__name__)

PODS = "/api/v1/pods"
WATCH_TIMEOUT_S = 300
LIST_PAGE = 500
_FINISHED = frozenset({"Succeeded", "Failed"})
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0


class PodInfo(NamedTuple):
    """What attestation needs of one pod."""

    uid: str
    namespace: str
    name: str
    service_account: str
    node: str
    phase: str
    containers: frozenset[str]  # container IDs (64 hex), running or not
    host_network: bool
    host_pid: bool

    @property
    def holder(self) -> str:
        return f"pod:{self.uid}"

    @property
    def running(self) -> bool:
        return self.phase == "Running"


def pod_info(obj: dict[str, Any]) -> PodInfo | None:
    """The pod of an API object, or None if it lacks a uid or name."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if not meta.get("uid") or not meta.get("name"):
        return None
    containers = set()
    for key in ("containerStatuses", "initContainerStatuses"):
        for item in status.get(key) or ():
            runtime_id = str(item.get("containerID") or "")
            _, sep, container_id = runtime_id.partition("://")
            if sep and container_id:
                containers.add(container_id)
    return PodInfo(
        uid=str(meta["uid"]),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta["name"]),
        service_account=str(spec.get("serviceAccountName") or "default"),
        node=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or "Pending"),
        containers=frozenset(containers),
        host_network=bool(spec.get("hostNetwork")),
        host_pid=bool(spec.get("hostPID")),
    )


class PodCache:
    """The node's pods by UID, kept current by a watch."""

    def __init__(self, api: KubeApi, node: str, *, on_gone: Callable[[str, str], None]) -> None:
        self._api = api
        self.node = node
        self._on_gone = on_gone
        self._pods: dict[str, PodInfo] = {}
        self._version = ""
        self.synced = False
        self.problem = "the node's pods have not been listed yet"
        self._changed = asyncio.Event()
        self._rng = random.Random()

    def __len__(self) -> int:
        return len(self._pods)

    def get(self, uid: str) -> PodInfo | None:
        return self._pods.get(uid)

    async def wait_for(self, uid: str, container_id: str, timeout: float) -> PodInfo | None:
        """The pod `uid` once it runs on this node and lists `container_id`; None when that is
        not so within `timeout` (a pod's status is written a moment after its container
        starts) or the pod has finished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pod = self._pods.get(uid)
            if pod is not None and (pod.phase in _FINISHED or pod.node != self.node):
                return None
            if pod is not None and pod.running and container_id in pod.containers:
                return pod
            left = deadline - loop.time()
            if left <= 0:
                return None
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return None

    async def sync(self) -> None:
        """List the node's pods (every page); pods known before but absent now leave."""
        pods: dict[str, PodInfo] = {}
        query = {"fieldSelector": f"spec.nodeName={self.node}", "limit": str(LIST_PAGE)}
        while True:
            page = await self._api.get_json(PODS, query)
            for item in page.get("items") or ():
                info = pod_info(item)
                if info is not None:
                    pods[info.uid] = info
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                self._version = str(meta.get("resourceVersion") or "")
                break
            query = {**query, "continue": str(meta["continue"])}
        gone = [uid for uid in self._pods if uid not in pods]
        self._pods = pods
        self.synced, self.problem = True, ""
        self._notify()
        for uid in gone:
            self._on_gone(f"pod:{uid}", "the pod is no longer on this node")
        log.info("node %s: %d pod(s) listed", self.node, len(pods))

    async def run(self) -> None:
        """Watch until cancelled: re-list when needed, back off while the API server fails."""
        failures = 0
        while True:
            try:
                if not self.synced:
                    await self.sync()
                await self._watch()
                failures = 0
            except KubeApiError as exc:
                failures += 1
                if exc.status == 410:
                    self.synced = False  # the version is too old: list again
                    continue
                self.problem = str(exc)
                wait = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures, 8))
                log.warning("pod watch of node %s: %s; again in %.1fs", self.node, exc, wait)
                await asyncio.sleep(wait * (0.8 + 0.4 * self._rng.random()))

    async def _watch(self) -> None:
        query = {
            "fieldSelector": f"spec.nodeName={self.node}",
            "resourceVersion": self._version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        async for event in self._api.watch(PODS, query):
            self._apply(str(event.get("type") or ""), event.get("object") or {})

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            raise KubeApiError(f"watch error: {printable(str(obj.get('message', '')))}", code)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._version = str(version)
        if kind == "BOOKMARK":
            return
        info = pod_info(obj)
        if info is None:
            return
        if kind == "DELETED" or info.node != self.node:
            self._pods.pop(info.uid, None)
            self._notify()
            self._on_gone(info.holder, f"pod {info.namespace}/{info.name} was deleted")
            return
        self._pods[info.uid] = info
        self._notify()
        if info.phase in _FINISHED:
            self._on_gone(info.holder, f"pod {info.namespace}/{info.name} has {info.phase.lower()}")

    def _notify(self) -> None:
        """Wake every `wait_for`; later waiters wait on a fresh event."""
        self._changed.set()
        self._changed = asyncio.Event()
