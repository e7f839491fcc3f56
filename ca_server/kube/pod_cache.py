"""A watch-backed cache of the cluster's pods, for node-bound impersonation (node_auth.py).

Istio's node authorizer reads a pod informer; so does this: one LIST of every pod, then a
WATCH from the list's resourceVersion, kept in `PodIndex` (pod UID -> the few facts the
decision needs; node -> the service accounts with unfinished pods there). No request ever
waits on the API server. When the watch fails (network, 410 Gone, RBAC), the cache stops
answering (`UpstreamUnavailable`, which Istio's clients retry) until a fresh LIST has
replaced the index, retried with jittered exponential backoff: a decision is made from a
synced cache or not at all, never from one that may have missed a deletion.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx2
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Pod

from ca_server.errors import UpstreamUnavailable

log = logging.getLogger(__name__)

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
LIST_CHUNK = 500


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the node check needs of one pod."""

    namespace: str
    name: str
    service_account: str
    node: str  # "" while unscheduled
    finished: bool  # phase Succeeded or Failed: its containers run no more

    @property
    def holds_identity(self) -> bool:
        """Whether this pod lets its node's agent act as its service account."""
        return bool(self.node) and not self.finished


def facts_of(pod: Pod) -> tuple[str, PodFacts] | None:
    """(uid, facts) of a pod object; None for an object without a uid (never from the API)."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    if meta is None or not meta.uid:
        return None
    return meta.uid, PodFacts(
        namespace=meta.namespace or "",
        name=meta.name or "",
        service_account=(spec.serviceAccountName if spec else None) or "default",
        node=(spec.nodeName if spec else None) or "",
        finished=status is not None and status.phase in FINISHED_PHASES,
    )


class PodIndex:
    """Pods by UID and by name and, per node, how many unfinished pods each `(ns, sa)` has.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodFacts] = {}
        self._uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid
        self._by_node: dict[str, Counter[tuple[str, str]]] = {}

    def replace(self, pods: Iterable[tuple[str, PodFacts]]) -> None:
        """Make the index hold exactly `pods` (after a LIST)."""
        fresh = PodIndex()
        for uid, facts in pods:
            fresh._put(uid, facts)
        with self._lock:
            self._pods, self._uids, self._by_node = fresh._pods, fresh._uids, fresh._by_node

    def apply(self, event: str, uid: str, facts: PodFacts) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        with self._lock:
            self._drop(uid)
            if event != "DELETED":
                self._put(uid, facts)

    def has_pod_on(self, node: str, namespace: str, account: str) -> bool:
        with self._lock:
            counts = self._by_node.get(node)
            return counts is not None and counts[(namespace, account)] > 0

    def pod(self, uid: str) -> PodFacts | None:
        with self._lock:
            return self._pods.get(uid)

    def uid_of(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._uids.get((namespace, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)

    def _put(self, uid: str, facts: PodFacts) -> None:
        self._pods[uid] = facts
        self._uids[(facts.namespace, facts.name)] = uid
        if facts.holds_identity:
            counts = self._by_node.setdefault(facts.node, Counter())
            counts[(facts.namespace, facts.service_account)] += 1

    def _drop(self, uid: str) -> None:
        old = self._pods.pop(uid, None)
        if old is None:
            return
        if self._uids.get((old.namespace, old.name)) == uid:
            del self._uids[(old.namespace, old.name)]
        if not old.holds_identity:
            return
        counts = self._by_node[old.node]
        key = (old.namespace, old.service_account)
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]
        if not counts:
            del self._by_node[old.node]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Waits between failed LIST/WATCH attempts: `first` doubling to `cap`, +/- `jitter`."""

    first: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2

    def wait(self, failures: int, rng: random.Random) -> float:
        base = min(self.cap, self.first * 2.0 ** max(0, failures - 1))
        return float(base * (1.0 + rng.uniform(-self.jitter, self.jitter)))


class PodCache:
    """LIST + WATCH of every pod on a daemon thread, feeding a `PodIndex`.

    `start()` returns at once; queries raise `UpstreamUnavailable` until the first LIST
    has landed, and again from a watch failure until the next LIST has.
    """

    def __init__(
        self,
        make_client: Callable[[], Client],
        *,
        backoff: Backoff = Backoff(),
        watch_seconds: int = 300,
        rng: random.Random | None = None,
    ) -> None:
        self._make_client = make_client
        self._backoff = backoff
        self._watch_seconds = watch_seconds
        self._rng = rng or random.Random()
        self.index = PodIndex()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem = "the pod cache has not listed the cluster's pods yet"
        self.resyncs = 0  # LISTs that replaced the index, for tests and logs

    def start(self) -> PodCache:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pod-cache", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and end the thread at its stream's next event or error (closing a
        client under a blocked reader is unsafe: see `RootCertPublisher.stop`)."""
        self._stop.set()
        self._synced.clear()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def has_pod_on(self, node: str, namespace: str, account: str) -> bool:
        """Whether `namespace/account` has an unfinished pod on `node`."""
        self._require_synced()
        return self.index.has_pod_on(node, namespace, account)

    def pod(self, uid: str) -> PodFacts | None:
        self._require_synced()
        return self.index.pod(uid)

    def uid_of(self, namespace: str, name: str) -> str | None:
        self._require_synced()
        return self.index.uid_of(namespace, name)

    def _require_synced(self) -> None:
        if not self._synced.is_set():
            raise UpstreamUnavailable(f"node check not possible yet: {self._problem}; retry")

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        client = self._make_client()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    version = self._list(client)
                    failures = 0
                    self._watch(client, version)
                except Exception as exc:  # whatever ends the watch, the index may be stale now
                    self._synced.clear()
                    if self._stop.is_set():
                        return
                    failures += 1
                    self._problem = f"the pod watch failed ({_describe(exc)})"
                    wait = self._backoff.wait(failures, self._rng)
                    log.warning(
                        "%s; listing pods again in %.1f s",
                        self._problem,
                        wait,
                        exc_info=not isinstance(exc, ApiError | httpx2.HTTPError),
                    )
                    self._stop.wait(wait)
        finally:
            client.close()

    def _list(self, client: Client) -> str:
        listing = client.list(Pod, namespace="*", chunk_size=LIST_CHUNK)
        pods = [facts for facts in map(facts_of, listing) if facts is not None]
        self.index.replace(pods)
        self.resyncs += 1
        if not self._synced.is_set():
            log.info("pod cache synced: %d pods", len(pods))
        self._synced.set()
        return listing.resourceVersion

    def _watch(self, client: Client, version: str) -> None:
        events = client.watch(
            Pod, namespace="*", resource_version=version, server_timeout=self._watch_seconds
        )
        for event, pod in events:
            if self._stop.is_set():
                return
            if event not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK
            facts = facts_of(pod)
            if facts is not None:
                self.index.apply(event, *facts)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        code = exc.status.code
        hint = (
            " (the CA's service account needs get, list and watch on pods)" if code == 403 else ""
        )
        return f"API server answered {code} {exc.status.reason}{hint}"
    if isinstance(exc, httpx2.HTTPError):
        return f"API server unreachable: {type(exc).__name__}"
    return f"unexpected {type(exc).__name__}"


__all__ = ["Backoff", "PodCache", "PodFacts", "PodIndex", "facts_of"]
