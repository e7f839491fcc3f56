"""Remote secrets in Istio's format: which kubeconfigs make a cluster, which are refused and why,
and how a set of Secrets becomes a set of clusters (`desired_clusters`). No API server: the
Secrets are built here in the shapes `istioctl create-remote-secret` and `bulwark kube
create-remote-secret` write."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from ca_server.kube.clusters import desired_clusters
from ca_server.kube.remote_secrets import (
    CLUSTER_ANNOTATION,
    MULTICLUSTER_LABEL,
    clusters_of,
    is_remote_secret,
    remote_cluster,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXBheWxvYWQ.c2ln"
CA_DATA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")


def kubeconfig(name: str = "c2", token: str = TOKEN) -> dict[str, Any]:
    """istioctl's shape: cluster, context and user all named after the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "certificate-authority-data": CA_DATA.decode(),
                    "server": "https://10.0.0.1:6443",
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
        "users": [{"name": name, "user": {"token": token}}],
    }


def secret(data: dict[str, bytes], name: str = "istio-remote-secret-c2", **meta: Any) -> Secret:
    labels = meta.pop("labels", {MULTICLUSTER_LABEL: "true"})
    return Secret(
        metadata=ObjectMeta(name=name, namespace="istio-system", labels=labels, **meta),
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )


def dumped(config: dict[str, Any]) -> bytes:
    return yaml.safe_dump(config).encode()


def test_istioctl_shaped_secret_makes_one_usable_cluster() -> None:
    s = secret({"c2": dumped(kubeconfig())}, annotations={CLUSTER_ANNOTATION: "c2"})
    assert is_remote_secret(s)
    clusters, notes = clusters_of(s)
    assert notes == []
    [c2] = clusters
    assert (c2.cluster_id, c2.secret, c2.server, c2.error) == (
        "c2",
        "istio-system/istio-remote-secret-c2",
        "https://10.0.0.1:6443",
        "",
    )
    assert c2.usable and c2.config is not None
    single = c2.config.get()
    assert single is not None and single.user is not None and single.user.token == TOKEN


def test_each_data_key_is_a_cluster() -> None:
    s = secret({"east": dumped(kubeconfig("east")), "west": dumped(kubeconfig("west"))})
    clusters, _ = clusters_of(s)
    assert [c.cluster_id for c in clusters] == ["east", "west"]
    assert all(c.usable for c in clusters)


def test_unlabelled_secret_is_not_a_remote_secret() -> None:
    assert not is_remote_secret(secret({}, labels={"app": "x"}))
    assert not is_remote_secret(secret({}, labels={MULTICLUSTER_LABEL: "false"}))


# (what, where: "user", "cluster" or "" for the top level, key, value, the error says)
REFUSED = [
    ("exec", "user", "exec", {"command": "/bin/sh", "apiVersion": "v1"}, "exec"),
    ("auth-provider", "user", "auth-provider", {"name": "gcp"}, "auth-provider"),
    ("token file", "user", "tokenFile", "/var/run/secrets/token", "tokenFile"),
    ("client cert file", "user", "client-certificate", "/etc/c.pem", "client-certificate"),
    ("client key file", "user", "client-key", "/etc/k.pem", "client-key"),
    ("tls-server-name", "cluster", "tls-server-name", "kube.example", "tls-server-name"),
    ("plain http", "cluster", "server", "http://10.0.0.1:8080", "https://"),
    ("no context", "", "current-context", "", "current-context"),
    ("unknown context", "", "current-context", "nope", "'nope' is not defined"),
]


@pytest.mark.parametrize(
    ("what", "where", "key", "value", "says"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_refused_kubeconfig_makes_an_unusable_cluster_saying_why(
    what: str, where: str, key: str, value: object, says: str
) -> None:
    config = kubeconfig()
    target = config[where + "s"][0][where] if where else config
    target[key] = value
    cluster = remote_cluster("c2", dumped(config), secret="istio-system/s")
    assert not cluster.usable
    assert says in cluster.error
    assert TOKEN not in cluster.error


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"\t{not: [yaml", "not YAML"),
        (b"- a list", "not a YAML mapping"),
        (b"clusters: 3\ncurrent-context: x\n", "clusters must be a list"),
    ],
    ids=["empty", "garbage", "list", "bad-clusters"],
)
def test_undecodable_kubeconfig_is_unusable(data: bytes, says: str) -> None:
    cluster = remote_cluster("c2", data, secret="ns/s")
    assert not cluster.usable and says in cluster.error


def test_context_naming_a_missing_user_is_unusable_without_a_traceback() -> None:
    config = kubeconfig()
    config["contexts"][0]["context"]["user"] = "ghost"
    cluster = remote_cluster("c2", dumped(config), secret="ns/s")
    assert not cluster.usable and "not usable" in cluster.error


def test_annotation_naming_another_cluster_is_reported_and_the_data_key_wins() -> None:
    s = secret({"c2": dumped(kubeconfig())}, annotations={CLUSTER_ANNOTATION: "c9"})
    clusters, notes = clusters_of(s)
    assert [c.cluster_id for c in clusters] == ["c2"]
    [note] = notes
    assert "'c9'" in note and "'c2'" in note


def test_changed_kubeconfig_changes_the_digest() -> None:
    a = remote_cluster("c2", dumped(kubeconfig()), secret="ns/s")
    b = remote_cluster("c2", dumped(kubeconfig(token="other")), secret="ns/s")
    assert a.digest != b.digest


def test_desired_clusters_ignore_the_own_cluster_and_a_second_claim() -> None:
    first = secret({"c2": dumped(kubeconfig())}, name="a-first")
    second = secret({"c2": dumped(kubeconfig()), "c3": dumped(kubeconfig("c3"))}, name="b-second")
    own = secret({"primary": dumped(kubeconfig("primary"))}, name="c-own")
    clusters, problems = desired_clusters([own, second, first], own_cluster_id="primary")
    assert sorted(clusters) == ["c2", "c3"]
    assert clusters["c2"].secret == "istio-system/a-first"  # first by namespace/name order
    assert any("already defined by istio-system/a-first" in p for p in problems)
    assert any("own cluster 'primary'" in p for p in problems)


def test_broken_cluster_is_kept_unusable_with_one_problem() -> None:
    broken = secret({"c4": b"not: a kubeconfig"}, name="broken")
    clusters, problems = desired_clusters([broken], own_cluster_id="primary")
    assert not clusters["c4"].usable
    [problem] = problems
    assert "remote cluster 'c4'" in problem and "unavailable" in problem
