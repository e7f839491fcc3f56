"""The root ConfigMap publisher never closes a client under a thread that is reading from it.

Defect covered: `RootCertPublisher.stop()` closed the watch threads' clients while those threads
were blocked reading a watch stream. Closing frees the socket's descriptor number while the
blocked read still polls it; the next connection given that number (the next publisher's
watch, in `make test-k8s`) lost bytes to the dead thread, so a ConfigMap edit was noticed only
when the watch window closed, 30 s later (tests/k8s/test_rootcm.py failed in CI).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from ca_server.kube.rootcm import RootCertPublisher


class Listing(list[Any]):
    resourceVersion = "1"


class RecordingClient:
    """Stands in for lightkube's Client: watches block until `release` is set."""

    def __init__(self, release: threading.Event, closes: list[tuple[str, bool]]) -> None:
        self._release = release
        self._closes = closes
        self._busy = 0
        self._lock = threading.Lock()

    def list(self, *_args: Any, **_kwargs: Any) -> Listing:
        return Listing()

    def watch(self, *_args: Any, **_kwargs: Any) -> Iterator[tuple[str, ConfigMap]]:
        with self._lock:
            self._busy += 1
        try:
            self._release.wait(10)
            cm = ConfigMap(metadata=ObjectMeta(name="istio-ca-root-cert", namespace="kube-public"))
            yield "MODIFIED", cm
        finally:
            with self._lock:
                self._busy -= 1

    def close(self) -> None:
        with self._lock:
            self._closes.append((threading.current_thread().name, self._busy > 0))


def test_stop_leaves_each_client_to_the_thread_that_reads_from_it() -> None:
    release = threading.Event()
    closes: list[tuple[str, bool]] = []
    publisher = RootCertPublisher(
        lambda: RecordingClient(release, closes),  # type: ignore[arg-type,return-value]
        root_pem=lambda: "root",
        is_leader=lambda: True,
        tick_seconds=0.05,
    )
    publisher.start()
    watchers = [
        t for t in threading.enumerate() if t.name.startswith("rootcm-") and "watch" in t.name
    ]
    assert len(watchers) == 2
    publisher.stop()
    assert not any(in_use for _, in_use in closes), closes
    release.set()  # the next event reaches the blocked watches; they see the stop and end
    for thread in watchers:
        thread.join(5)
        assert not thread.is_alive()
    assert sorted(name for name, _ in closes) == [
        "rootcm-cm-watch",
        "rootcm-ns-watch",
        "rootcm-worker",
    ]
    assert not any(in_use for _, in_use in closes), closes
