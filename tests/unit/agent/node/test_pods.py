"""The node's pod cache as the watch feeds it: pod objects read into what attestation needs,
and a pod that is deleted, finishes or leaves the node reported at once (the watch against a
real API server is tests/k8s/test_node_attestation.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.node.kube_api import KubeApi, KubeApiError
from agent.node.pods import PodCache, pod_info

CID = "a" * 64


def pod(
    uid: str = "u-1", *, node: str = "node-a", phase: str = "Running", cid: str = CID, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": f"p-{uid}", "namespace": "demo", "resourceVersion": "7"},
        "spec": {"nodeName": node, "serviceAccountName": "frontend", **spec},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "app", "containerID": f"containerd://{cid}"}],
            "initContainerStatuses": [{"name": "init", "containerID": "cri-o://" + "b" * 64}],
        },
    }


def test_pod_objects_give_what_attestation_needs() -> None:
    info = pod_info(pod(hostNetwork=True))
    assert info is not None
    assert (info.uid, info.namespace, info.name, info.service_account) == (
        "u-1",
        "demo",
        "p-u-1",
        "frontend",
    )
    assert info.containers == frozenset({CID, "b" * 64}) and info.running and info.host_network
    assert pod_info({"metadata": {"name": "x"}}) is None  # no uid
    bare = pod_info({"metadata": {"uid": "u", "name": "n"}})
    assert bare is not None and bare.service_account == "default" and bare.phase == "Pending"


@pytest.fixture
def cache() -> tuple[PodCache, list[tuple[str, str]]]:
    gone: list[tuple[str, str]] = []
    api = KubeApi.__new__(KubeApi)  # never asked: the events below are applied directly
    return PodCache(api, "node-a", on_gone=lambda holder, why: gone.append((holder, why))), gone


def test_watch_events_keep_the_cache_and_report_who_left(
    cache: tuple[PodCache, list[tuple[str, str]]],
) -> None:
    pods, gone = cache
    pods._apply("ADDED", pod("u-1"))
    pods._apply("ADDED", pod("u-2"))
    assert pods.get("u-1") is not None and len(pods) == 2
    pods._apply("MODIFIED", pod("u-1", phase="Succeeded"))
    pods._apply("DELETED", pod("u-2"))
    pods._apply("MODIFIED", pod("u-3", node="node-b"))  # bound elsewhere: never ours
    assert gone == [
        ("pod:u-1", "pod demo/p-u-1 has succeeded"),
        ("pod:u-2", "pod demo/p-u-2 was deleted"),
        ("pod:u-3", "pod demo/p-u-3 was deleted"),
    ]
    assert pods.get("u-2") is None and pods.get("u-3") is None
    pods._apply("BOOKMARK", {"metadata": {"resourceVersion": "99"}})
    assert pods._version == "99"
    with pytest.raises(KubeApiError) as expired:
        pods._apply("ERROR", {"code": 410, "message": "too old resource version"})
    assert expired.value.status == 410


async def test_a_new_container_waits_for_its_status(
    cache: tuple[PodCache, list[tuple[str, str]]],
) -> None:
    pods, _ = cache
    pods._apply("ADDED", pod("u-1", phase="Pending", cid="c" * 64))
    waiting = asyncio.ensure_future(pods.wait_for("u-1", CID, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    pods._apply("MODIFIED", pod("u-1"))
    found = await waiting
    assert found is not None and found.uid == "u-1"
    assert await pods.wait_for("u-9", CID, timeout=0.05) is None  # never appears
    pods._apply("MODIFIED", pod("u-1", phase="Failed"))
    assert await pods.wait_for("u-1", CID, timeout=5) is None  # finished: no wait
