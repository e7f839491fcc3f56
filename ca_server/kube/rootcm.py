"""Root distribution: ConfigMap `istio-ca-root-cert` in every namespace (docs/COMPATIBILITY.md §1).

Two watches (namespaces; the root ConfigMaps themselves) feed one queue of namespaces to
check; one worker makes each namespace's ConfigMap hold the current root bundle and the
`istio.io/config=true` label. Only the leader writes: the worker asks `is_leader()` before
every write, so a replica that loses the Lease stops writing at once. Gaining leadership or a
root change (noticed by polling `root_pem()`) queues every namespace; so does a periodic resync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import httpx2
from lightkube import ApiError, Client
from lightkube.core.client import FieldSelector
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import OnErrorAction, OnErrorResult

from ca_server.kube.settings import ROOT_CONFIGMAP_NAME
from certs import istio_files

log = logging.getLogger(__name__)

CONFIG_LABEL = ("istio.io/config", "true")
EXCLUDED_NAMESPACES = frozenset({"kube-public", "kube-node-lease", "local-path-storage"})


class _NamespaceQueue:
    """A de-duplicating work queue of namespace names."""

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}
        self._cond = threading.Condition()

    def add(self, names: Iterable[str]) -> None:
        with self._cond:
            for name in names:
                self._pending[name] = None
            self._cond.notify()

    def take(self, timeout: float) -> str | None:
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout)
            if not self._pending:
                return None
            name = next(iter(self._pending))
            del self._pending[name]
            return name


class RootCertPublisher:
    """Keeps `istio-ca-root-cert` right in every namespace while `is_leader()` holds."""

    def __init__(
        self,
        make_client: Callable[[], Client],
        *,
        root_pem: Callable[[], str],
        is_leader: Callable[[], bool],
        name: str = ROOT_CONFIGMAP_NAME,
        excluded: frozenset[str] = EXCLUDED_NAMESPACES,
        resync_seconds: float = 60.0,
        tick_seconds: float = 0.5,
        watch_seconds: int = 30,
        cluster: str = "",
    ) -> None:
        """`cluster`: a remote cluster's ID, named in this publisher's log lines."""
        self._where = f" of cluster {cluster!r}" if cluster else ""
        self._failing = ""  # the last listing failure logged, until a listing works again
        self._make_client = make_client
        self._client = make_client()
        self._root_pem = root_pem
        self._is_leader = is_leader
        self._name = name
        self._excluded = excluded
        self._resync = resync_seconds
        self._tick = tick_seconds
        self._watch_seconds = watch_seconds
        self._queue = _NamespaceQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        targets: list[tuple[str, Callable[[Client], None]]] = [
            ("rootcm-ns-watch", self._watch_namespaces),
            ("rootcm-cm-watch", self._watch_configmaps),
        ]
        for thread_name, watch in targets:
            self._spawn(thread_name, self._watch_forever, watch, self._make_client())
        self._spawn("rootcm-worker", self._work)

    def stop(self) -> None:
        """Stop writing at once.

        Each thread closes its own client when it ends: closing a client under a thread that
        is blocked reading from it frees the socket's descriptor number while the blocked
        read still polls it, so the next connection that gets that number (another client's
        watch) loses bytes to the dead thread and stalls. The worker ends within a tick;
        a watch thread (a daemon) ends at its stream's next event or error."""
        self._stop.set()
        for thread in self._threads:
            if thread.name == "rootcm-worker":
                thread.join(timeout=5)

    def queue_all(self) -> bool:
        """Check every namespace soon (root changed, leadership gained, resync, watch gap).

        False when the namespaces could not be listed; the caller tries again."""
        try:
            self._queue.add(self._namespaces(self._client))
        except (ApiError, httpx2.HTTPError) as exc:
            failure = _describe(exc)
            if failure != self._failing:  # once per distinct failure, not every tick
                log.warning("listing namespaces%s failed: %s", self._where, failure)
            self._failing = failure
            return False
        if self._failing:
            log.info("listing namespaces%s works again", self._where)
            self._failing = ""
        return True

    def _namespaces(self, client: Client) -> list[str]:
        names = (ns.metadata.name for ns in client.list(Namespace) if ns.metadata)
        return [n for n in names if n and n not in self._excluded]

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- watches ---------------------------------------------------------------------------

    def _watch_forever(self, watch: Callable[[Client], None], client: Client) -> None:
        last = ""  # the failure logged last: an API server that stays down logs it once
        try:
            while not self._stop.is_set():
                try:
                    watch(client)
                    last = ""
                except (ApiError, httpx2.HTTPError, RuntimeError) as exc:
                    if self._stop.is_set():
                        return
                    if _describe(exc) != last:
                        log.warning("watch%s ended (%s); restarting", self._where, _describe(exc))
                    last = _describe(exc)
                self._stop.wait(1.0)
        finally:
            client.close()

    def _on_watch_error(self, exc: Exception, count: int) -> OnErrorResult:
        if self._stop.is_set():
            return OnErrorResult(OnErrorAction.STOP)
        if isinstance(exc, ApiError) and exc.status.code in (401, 403):
            return OnErrorResult(OnErrorAction.RAISE)
        return OnErrorResult(OnErrorAction.RETRY, sleep=min(0.2 * count, 5.0))

    def _watch_namespaces(self, client: Client) -> None:
        events = client.watch(
            Namespace, server_timeout=self._watch_seconds, on_error=self._on_watch_error
        )
        for _event, ns in events:
            if self._stop.is_set():
                return
            name = ns.metadata.name if ns.metadata else None
            phase = ns.status.phase if ns.status else None
            if name and name not in self._excluded and phase != "Terminating":
                self._queue.add([name])

    def _watch_configmaps(self, client: Client) -> None:
        # List, check every namespace, then watch from the list's version: a ConfigMap
        # deleted before this watch (or while a previous one was down) leaves no event.
        fields: FieldSelector = {"metadata.name": self._name}
        listing = client.list(ConfigMap, namespace="*", fields=fields)
        for _ in listing:
            pass
        self._queue.add(self._namespaces(client))
        events = client.watch(
            ConfigMap,
            namespace="*",
            fields=fields,
            resource_version=listing.resourceVersion,
            server_timeout=self._watch_seconds,
            on_error=self._on_watch_error,
        )
        for event, cm in events:
            if self._stop.is_set():
                return
            namespace = cm.metadata.namespace if cm.metadata else None
            if not namespace or namespace in self._excluded:
                continue
            if event == "DELETED" or not self._is_current(cm, self._root_pem()):
                self._queue.add([namespace])

    # -- worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._work_until_stopped()
        finally:
            self._client.close()

    def _work_until_stopped(self) -> None:
        leading = False
        root = ""
        last_resync = time.monotonic()
        while not self._stop.is_set():
            now_leading = self._is_leader()
            current_root = self._root_pem()
            due = time.monotonic() - last_resync >= self._resync
            if now_leading and (not leading or current_root != root or due):
                if not self.queue_all():
                    self._stop.wait(self._tick)
                    continue  # the change stays unseen, so the next round lists again
                last_resync = time.monotonic()
            leading, root = now_leading, current_root
            namespace = self._queue.take(self._tick)
            if namespace is None:
                continue
            if not self._is_leader():
                continue  # followers drop work; leadership gained re-queues everything
            self._reconcile(namespace, current_root)

    def _reconcile(self, namespace: str, root: str) -> None:
        try:
            self._reconcile_once(namespace, root)
        except ApiError as exc:
            code = exc.status.code
            if code == 409:
                self._queue.add([namespace])  # raced an edit: look again
            elif code == 404 or (code == 403 and "terminat" in (exc.status.message or "")):
                return  # namespace gone or going away
            else:
                log.warning("root ConfigMap in %s%s: %s", namespace, self._where, _describe(exc))
        except httpx2.HTTPError as exc:
            log.warning("root ConfigMap in %s%s: %s", namespace, self._where, _describe(exc))
            self._queue.add([namespace])
            self._stop.wait(1.0)  # API server unreachable: do not spin

    def _reconcile_once(self, namespace: str, root: str) -> None:
        try:
            cm = self._client.get(ConfigMap, self._name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            if not self._is_leader():
                return
            label_key, label_value = CONFIG_LABEL
            fresh = ConfigMap(
                metadata=ObjectMeta(
                    name=self._name, namespace=namespace, labels={label_key: label_value}
                ),
                data={istio_files.ROOT_CERT: root},
            )
            self._client.create(fresh, namespace=namespace)
            log.info("created %s in %s%s", self._name, namespace, self._where)
            return
        if self._is_current(cm, root) or not self._is_leader():
            return
        label_key, label_value = CONFIG_LABEL
        assert cm.metadata is not None
        cm.metadata.labels = {**(cm.metadata.labels or {}), label_key: label_value}
        cm.data = {istio_files.ROOT_CERT: root}
        cm.binaryData = None
        self._client.replace(cm)  # carries resourceVersion: 409 on a race
        log.info("repaired %s in %s%s", self._name, namespace, self._where)

    @staticmethod
    def _is_current(cm: ConfigMap, root: str) -> bool:
        label_key, label_value = CONFIG_LABEL
        labels = (cm.metadata.labels if cm.metadata else None) or {}
        return (
            labels.get(label_key) == label_value
            and cm.data == {istio_files.ROOT_CERT: root}
            and not cm.binaryData
        )


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason}"
    return type(exc).__name__


__all__ = ["EXCLUDED_NAMESPACES", "ROOT_CONFIGMAP_NAME", "RootCertPublisher"]
