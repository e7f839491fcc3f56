"""Root ConfigMap publisher against a real API server: create, repair, exclusions, leadership."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.resources.core_v1 import ConfigMap

from ca_server.kube import RootCertPublisher
from tests.support.kube_harness import ControlPlane

ROOT_A = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
ROOT_B = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"
NAME = "istio-ca-root-cert"


def configmap(client: Client, ns: str) -> ConfigMap | None:
    try:
        return client.get(ConfigMap, NAME, namespace=ns)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def wait_for(cond: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < seconds, f"condition not met within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def holds(client: Client, ns: str, root: str) -> bool:
    cm = configmap(client, ns)
    return (
        cm is not None
        and cm.data == {"root-cert.pem": root}
        and (cm.metadata.labels or {}).get("istio.io/config") == "true"  # type: ignore[union-attr]
    )


class Switch:
    def __init__(self, root: str, leader: bool) -> None:
        self.root, self.leader = root, leader


@pytest.fixture
def publisher(control_plane: ControlPlane) -> Iterator[tuple[RootCertPublisher, Switch]]:
    config = KubeConfig.from_file(control_plane.admin_kubeconfig)
    switch = Switch(ROOT_A, True)
    pub = RootCertPublisher(
        lambda: Client(config=config, trust_env=False),
        root_pem=lambda: switch.root,
        is_leader=lambda: switch.leader,
    )
    pub.start()
    yield pub, switch
    pub.stop()


def test_new_namespace_gets_the_root_within_5s(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    publisher: tuple[RootCertPublisher, Switch],
) -> None:
    ns = make_namespace("cm")
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)
    assert holds(admin_client, "default", ROOT_A)


def test_deleted_or_edited_configmap_is_repaired_within_5s(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    publisher: tuple[RootCertPublisher, Switch],
) -> None:
    ns = make_namespace("cm")
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)
    admin_client.delete(ConfigMap, NAME, namespace=ns)
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)
    cm = configmap(admin_client, ns)
    assert cm is not None
    cm.data = {"root-cert.pem": "tampered"}
    admin_client.replace(cm)
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)
    cm = configmap(admin_client, ns)
    assert cm is not None and cm.metadata is not None
    cm.metadata.labels = {}
    admin_client.replace(cm)
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)


def test_excluded_namespaces_are_left_alone(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    publisher: tuple[RootCertPublisher, Switch],
) -> None:
    ns = make_namespace("cm")
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)
    for excluded in ("kube-public", "kube-node-lease"):
        assert configmap(admin_client, excluded) is None


def test_root_change_reaches_every_namespace(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    publisher: tuple[RootCertPublisher, Switch],
) -> None:
    first, second = make_namespace("cm"), make_namespace("cm")
    wait_for(lambda: holds(admin_client, first, ROOT_A) and holds(admin_client, second, ROOT_A), 5)
    publisher[1].root = ROOT_B
    wait_for(lambda: holds(admin_client, first, ROOT_B) and holds(admin_client, second, ROOT_B), 5)


def test_follower_writes_nothing_and_leader_catches_up(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    publisher: tuple[RootCertPublisher, Switch],
) -> None:
    _, switch = publisher
    switch.leader = False
    time.sleep(1.0)  # let the worker see it
    ns = make_namespace("cm")
    time.sleep(2.0)
    assert configmap(admin_client, ns) is None
    switch.leader = True
    wait_for(lambda: holds(admin_client, ns, ROOT_A), 5)
