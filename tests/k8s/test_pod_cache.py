"""The pod cache behind node-bound impersonation, against a real kube-apiserver (issue 23).

Its readiness gates every decision: before the first LIST has landed, and from a failed
watch until the next LIST has, it answers UNAVAILABLE (retryable), never a yes or a no that
may be stale. The network to the API server is cut with a TCP relay (TLS passes through it
to the real API server); a pod deleted while the cache was cut off must be gone after the
resync.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from ca_server.errors import UpstreamUnavailable
from ca_server.kube.pod_cache import Backoff, PodCache
from tests.k8s.conftest import create_service_account, request_token
from tests.support.kube_harness import API_AUDIENCE, ControlPlane, write_kubeconfig
from tests.support.tcp_relay import TcpRelay

WAIT_S = 30.0  # how long the cache may take to follow the API server (never a measurement)
FAST = Backoff(first=0.1, cap=0.5)


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def client_of(kubeconfig: Path) -> Callable[[], Client]:
    return lambda: Client(config=KubeConfig.from_file(kubeconfig), trust_env=False)


@pytest.fixture
def relay(control_plane: ControlPlane) -> Iterator[TcpRelay]:
    host, port = control_plane.url.removeprefix("https://").rsplit(":", 1)
    relay = TcpRelay((host, int(port)))
    yield relay
    relay.close()


@pytest.fixture
def relayed_kubeconfig(control_plane: ControlPlane, relay: TcpRelay, tmp_path: Path) -> Path:
    """The admin's credentials, through the relay."""
    path = tmp_path / "relayed.kubeconfig"
    write_kubeconfig(
        path,
        server=f"https://{relay.address}",
        ca_file=control_plane.ca_file,
        client_cert=control_plane.admin_cert,
        client_key=control_plane.admin_key,
    )
    return path


def make_pod(client: Client, namespace: str, account: str, node: str) -> str:
    name = f"{account}-{uuid.uuid4().hex[:6]}"
    client.create(
        Pod(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=PodSpec(
                serviceAccountName=account,
                nodeName=node,
                containers=[Container(name="c", image="registry.invalid/none:1")],
            ),
        )
    )
    return name


def unavailable(cache: PodCache, node: str, ns: str, sa: str) -> bool:
    try:
        cache.has_pod_on(node, ns, sa)
    except UpstreamUnavailable:
        return True
    return False


def test_a_cache_that_never_listed_answers_unavailable_then_follows(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    relay: TcpRelay,
    relayed_kubeconfig: Path,
) -> None:
    ns = make_namespace("pc")
    create_service_account(admin_client, ns, "web")
    make_pod(admin_client, ns, "web", "node-p")
    relay.cut()
    cache = PodCache(client_of(relayed_kubeconfig), backoff=FAST, rng=random.Random(1)).start()
    try:
        time.sleep(1.0)  # several attempts fail meanwhile
        assert not cache.synced
        with pytest.raises(UpstreamUnavailable, match="retry"):
            cache.has_pod_on("node-p", ns, "web")
        with pytest.raises(UpstreamUnavailable):
            cache.pod(str(uuid.uuid4()))
        relay.restore()
        assert cache.wait_synced(WAIT_S)
        assert cache.has_pod_on("node-p", ns, "web")
        assert not cache.has_pod_on("node-q", ns, "web")
    finally:
        cache.stop()


def test_a_broken_watch_answers_unavailable_and_resyncs_what_it_missed(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    relay: TcpRelay,
    relayed_kubeconfig: Path,
) -> None:
    ns = make_namespace("pc")
    for account in ("stays", "leaves", "arrives"):
        create_service_account(admin_client, ns, account)
    make_pod(admin_client, ns, "stays", "node-r")
    leaving = make_pod(admin_client, ns, "leaves", "node-r")
    cache = PodCache(client_of(relayed_kubeconfig), backoff=FAST, rng=random.Random(2)).start()
    try:
        assert cache.wait_synced(WAIT_S)
        until(lambda: cache.has_pod_on("node-r", ns, "leaves"), "the cache lists both pods")
        lists = cache.resyncs
        relay.cut()
        until(lambda: not cache.synced, "a cut watch makes the cache unready")
        assert unavailable(cache, "node-r", ns, "leaves"), "a stale yes while cut off"
        admin_client.delete(Pod, leaving, namespace=ns, grace_period=0)
        make_pod(admin_client, ns, "arrives", "node-r")
        time.sleep(0.5)
        assert unavailable(cache, "node-r", ns, "arrives"), "a stale no while cut off"
        relay.restore()
        assert cache.wait_synced(WAIT_S)
        assert cache.resyncs > lists, "the cache listed the pods again"
        assert not cache.has_pod_on("node-r", ns, "leaves"), "the deletion made while cut off"
        assert cache.has_pod_on("node-r", ns, "arrives")
        assert cache.has_pod_on("node-r", ns, "stays")
    finally:
        cache.stop()


def test_without_the_right_to_watch_pods_it_stays_unavailable_naming_rbac(
    admin_client: Client,
    control_plane: ControlPlane,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    ns = make_namespace("norbac")
    create_service_account(admin_client, ns, "nobody")
    token = request_token(admin_client, ns, "nobody", audiences=[API_AUDIENCE])
    kubeconfig = control_plane.write_token_kubeconfig(tmp_path / "k", token, namespace=ns)
    cache = PodCache(client_of(kubeconfig), backoff=FAST, rng=random.Random(3)).start()
    try:
        time.sleep(1.0)
        assert not cache.synced
        with pytest.raises(UpstreamUnavailable, match="get, list and watch on pods"):
            cache.has_pod_on("node-a", ns, "nobody")
    finally:
        cache.stop()
