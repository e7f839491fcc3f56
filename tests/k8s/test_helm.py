"""The Helm chart deploy/helm/bulwark: `helm lint`, `helm template` of every documented values
file, the schema's refusals, and `helm install` into the suite's real kube-apiserver (objects
accepted and as asked; no kubelet runs, so no pod starts). helm is built from the Go module
registry (tests/k8s/build-tool.sh helm)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import Namespace, PersistentVolumeClaim, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.rbac_authorization_v1 import ClusterRole, Role

from tests.support.deploy_tools import CHART, run, tool
from tests.support.kube_harness import ControlPlane

VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Run helm with its state in a temporary directory; returns stdout, asserts success."""
    binary = tool("helm")
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }

    def call(*args: str | Path, ok: bool = True) -> str:
        proc = run([binary, *args], env=env)
        if ok:
            assert proc.returncode == 0, f"helm {' '.join(map(str, args))}:\n{proc.stderr}"
            return proc.stdout
        assert proc.returncode != 0, f"helm {' '.join(map(str, args))} should have failed"
        return proc.stderr

    return call


def template(helm: Callable[..., str], *args: str | Path) -> list[dict[str, Any]]:
    out = helm("template", "bulwark", CHART, "-n", "istio-system", *args)
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def ca_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deploy = [d for d in docs if d["kind"] == "Deployment"]
    container: dict[str, Any]
    (container,) = deploy[0]["spec"]["template"]["spec"]["containers"]
    return container


def test_chart_lints_with_every_values_file(helm: Callable[..., str]) -> None:
    assert len(VALUES) >= 8, VALUES
    helm("lint", "--strict", CHART)
    for values in VALUES:
        out = helm("lint", "--strict", CHART, "-f", values)
        assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("values", VALUES, ids=[v.name for v in VALUES])
def test_template_renders_every_documented_values_file(
    helm: Callable[..., str], values: Path
) -> None:
    docs = template(helm, "-f", values)
    chosen = yaml.safe_load(values.read_text())
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert doc["kind"] != "Namespace", "the chart creates a namespace nobody asked for"
    container = ca_container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "--admin-token-file=/etc/bulwark/admin/token" in container["args"]
    assert one(docs, "PodDisruptionBudget")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    ports = [p["port"] for rule in policies["bulwark-ca"]["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(ports) == [15012, 15013, 15014]
    env = {e["name"]: e for e in container["env"]}
    replicas = one(docs, "Deployment")["spec"]["replicas"]
    assert replicas == chosen.get("replicaCount", 1)
    if replicas > 1:
        # A shared record: the DSN from a Secret, never a per-pod SQLite file.
        assert "secretKeyRef" in env["BULWARK_RECORD"]["valueFrom"]
        assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
        assert pod["affinity"]["podAntiAffinity"]
    else:
        data = next(v for v in pod["volumes"] if v["name"] == "data")
        if "BULWARK_RECORD" not in env:
            assert data["persistentVolumeClaim"]["claimName"] == "bulwark-ca-data"
            assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"
    kinds = {d["kind"] for d in docs}
    monitoring = chosen.get("metrics", {})
    assert ("ServiceMonitor" in kinds) == monitoring.get("serviceMonitor", {}).get("enabled", False)
    assert ("PrometheusRule" in kinds) == monitoring.get("prometheusRule", {}).get("enabled", False)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "replicaCount=2"], "postgresql"),
        (["--set", "replicaCount=3", "--set", "record.type=sqlite"], "postgresql"),
        (["--set", "record.type=postgresql"], "existingSecret"),
        (["--set", "replicaCount=0"], "minimum"),
        (["--set", "mode=sidecar"], "mode"),
        (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
        (["--set", "recrod.type=postgresql"], "recrod"),
        (["--set", "hsm.enabled=true"], "hsm/keyUri"),
        (
            [
                "--set",
                "hsm.enabled=true",
                "--set",
                "hsm.keyUri=/etc/key.pem",
                "--set",
                "hsm.modulePath=/x.so",
                "--set",
                "hsm.pinSecret.name=p",
            ],
            "pkcs11:",
        ),
    ],
    ids=[
        "replicas2-default-sqlite",
        "replicas3-sqlite",
        "pg-without-dsn",
        "zero",
        "mode",
        "root",
        "typo",
        "hsm-without-uri",
        "hsm-key-file",
    ],
)
def test_schema_refuses_unsafe_values(
    helm: Callable[..., str], args: list[str], complaint: str
) -> None:
    """The split-record trap of issue #15: replicas > 1 with SQLite is refused before any
    object is rendered, with a message that names the field."""
    err = helm("template", "bulwark", CHART, *args, ok=False)
    assert "values don't meet the specifications of the schema" in err, err
    assert complaint in err, err


def test_hsm_mode_mounts_the_module_and_the_pin_secret(helm: Callable[..., str]) -> None:
    """The CA key in an HSM (docs/HSM.md): the URI and module as flags, the PIN as a file of
    its own Secret (0440: owner and fsGroup), never an env value or a flag value."""
    docs = template(helm, "-f", CHART / "ci" / "hsm-values.yaml")
    container = ca_container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    args = container["args"]
    assert "--ca-key=pkcs11:token=bulwark;object=root-2026" in args
    assert "--pkcs11-module=/opt/pkcs11/lib/softhsm/libsofthsm2.so" in args
    assert "--pkcs11-pin-file=/etc/bulwark/hsm/pin" in args and "--jwt-keys-in-hsm" in args
    pin = next(v for v in pod["volumes"] if v["name"] == "hsm-pin")["secret"]
    assert pin["secretName"] == "bulwark-hsm-pin" and pin["defaultMode"] == 0o440
    assert pin["items"] == [{"key": "pin", "path": "pin"}]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["hsm-pin"]["readOnly"] is True and mounts["pkcs11"]["mountPath"] == "/opt/pkcs11"
    env = {e["name"] for e in container["env"]}
    assert "SOFTHSM2_CONF" in env and not any("PIN" in name for name in env)
    plain = template(helm)
    assert not [a for a in ca_container(plain)["args"] if "pkcs11" in a or "ca-key" in a]


def test_multicluster_values_set_the_rbac_and_the_flags(helm: Callable[..., str]) -> None:
    """Remote secrets on (the default): list/watch on Secrets in the release namespace only;
    off: neither the rule nor the watch. Aliases reach the CA as ALIAS=CLUSTER pairs."""

    def secret_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        role = one(docs, "Role")
        return [r for r in role["rules"] if r["resources"] == ["secrets"] and "list" in r["verbs"]]

    def env(docs: list[dict[str, Any]]) -> dict[str, str]:
        return {e["name"]: e.get("value", "") for e in ca_container(docs)["env"]}

    default = template(helm)
    assert secret_rules(default) == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}
    ]
    assert env(default)["BULWARK_KUBE_REMOTE_SECRETS"] == "on"
    assert "BULWARK_CLUSTER_ALIASES" not in env(default)
    cluster_role = one(default, "ClusterRole")
    assert all("secrets" not in r["resources"] for r in cluster_role["rules"])
    off = template(
        helm,
        "--set", "multicluster.remoteSecrets=false",
        "--set", "multicluster.clusterAliases.old-a=cluster-a",
        "--set", "multicluster.clusterAliases.b=cluster-b",
    )  # fmt: skip
    assert secret_rules(off) == []
    assert env(off)["BULWARK_KUBE_REMOTE_SECRETS"] == "off"
    assert env(off)["BULWARK_CLUSTER_ALIASES"] == "b=cluster-b,old-a=cluster-a"
    helm("template", "bulwark", CHART, "--set", "multicluster.remoteSecrets=maybe", ok=False)


def test_ha_on_postgresql_is_accepted_by_the_schema(helm: Callable[..., str]) -> None:
    docs = template(
        helm,
        "--set",
        "replicaCount=2",
        "--set",
        "record.type=postgresql",
        "--set",
        "record.postgresql.existingSecret=my-dsn",
    )
    ref = {e["name"]: e for e in ca_container(docs)["env"]}["BULWARK_RECORD"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "my-dsn", "key": "url"}


def test_namespace_is_created_only_on_request(helm: Callable[..., str]) -> None:
    assert not [d for d in template(helm) if d["kind"] == "Namespace"]
    docs = template(helm, "--set", "namespace.create=true")
    assert one(docs, "Namespace")["metadata"]["name"] == "istio-system"


def test_with_istio_mode_names_the_service_and_certificate(helm: Callable[..., str]) -> None:
    docs = template(helm, "--set", "mode=with-istio")
    assert one(docs, "Service")["metadata"]["name"] == "bulwark-ca"
    env = {e["name"]: e.get("value") for e in ca_container(docs)["env"]}
    assert env["BULWARK_SERVER_DNS_NAMES"].split(",") == [
        "bulwark-ca.istio-system.svc",
        "bulwark-ca.istio-system.svc.cluster.local",
        "istiod.istio-system.svc",
    ]
    standalone = template(helm)
    assert one(standalone, "Service")["metadata"]["name"] == "istiod"


def test_monitoring_embeds_every_alert_of_the_rules_file(helm: Callable[..., str]) -> None:
    docs = template(helm, "-f", CHART / "ci" / "monitoring-values.yaml")
    rule = one(docs, "PrometheusRule")
    source = yaml.safe_load((CHART / "files" / "bulwark.rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http-monitoring"
    assert {"targetLabel": "job", "replacement": "bulwark-ca"} in endpoint["relabelings"]


# -- helm install into the real API server -------------------------------------------------


@pytest.fixture(scope="module")
def kube_helm(helm: Callable[..., str], control_plane: ControlPlane) -> Callable[..., str]:
    def call(*args: str | Path, ok: bool = True) -> str:
        return helm(*args, "--kubeconfig", control_plane.admin_kubeconfig, ok=ok)

    return call


def _token(client: Client, namespace: str) -> bytes:
    secret = client.get(Secret, "bulwark-ca-admin-token", namespace=namespace)
    assert secret.data is not None
    return base64.b64decode(secret.data["token"])


def test_helm_install_ha_values_into_the_api_server(
    kube_helm: Callable[..., str], admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    """ci/ha-values.yaml installed for real: 3 replicas on distinct nodes, the record's DSN
    from Secret bulwark-record, no PVC, a PDB, a NetworkPolicy and a generated admin token
    that `helm upgrade` keeps."""
    ns = make_namespace("helm-ha")
    kube_helm("install", "bulwark", CHART, "-n", ns, "-f", CHART / "ci" / "ha-values.yaml")
    deploy = admin_client.get(Deployment, "bulwark-ca", namespace=ns)
    assert deploy.spec is not None and deploy.spec.replicas == 3
    pod = deploy.spec.template.spec
    assert pod is not None and pod.affinity is not None
    anti = pod.affinity.podAntiAffinity
    assert anti is not None and anti.requiredDuringSchedulingIgnoredDuringExecution
    (container,) = pod.containers
    env = {e.name: e for e in container.env or []}
    record = env["BULWARK_RECORD"].valueFrom
    assert record is not None and record.secretKeyRef is not None
    assert (record.secretKeyRef.name, record.secretKeyRef.key) == ("bulwark-record", "url")
    assert container.startupProbe and container.livenessProbe and container.readinessProbe
    assert not list(admin_client.list(PersistentVolumeClaim, namespace=ns))
    pdb = admin_client.get(PodDisruptionBudget, "bulwark-ca", namespace=ns)
    assert pdb.spec is not None and pdb.spec.maxUnavailable == 1
    admin_client.get(NetworkPolicy, "bulwark-ca", namespace=ns)
    admin_client.get(Role, "bulwark-ca", namespace=ns)
    admin_client.get(ClusterRole, f"bulwark-ca-{ns}")
    service = admin_client.get(Service, "istiod", namespace=ns)
    assert service.spec is not None and service.spec.ports is not None
    assert {p.port for p in service.spec.ports} == {15012, 15013, 15014}
    token = _token(admin_client, ns)
    assert len(token) == 48
    kube_helm("upgrade", "bulwark", CHART, "-n", ns, "-f", CHART / "ci" / "ha-values.yaml")
    assert _token(admin_client, ns) == token, "helm upgrade replaced the admin token"
    kube_helm("uninstall", "bulwark", "-n", ns)
    admin_client.get(Namespace, ns)  # not the chart's to delete
    with pytest.raises(ApiError):
        admin_client.get(Deployment, "bulwark-ca", namespace=ns)


def test_helm_install_evaluation_postgresql_and_sqlite_keeps_record(
    kube_helm: Callable[..., str], admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    """The evaluation database (a StatefulSet with a PVC) and the record DSN built from its
    generated password; then one replica on SQLite whose PVC survives `helm uninstall`."""
    ns = make_namespace("helm-eval")
    values = CHART / "ci" / "ha-evaluation-values.yaml"
    kube_helm("install", "bulwark", CHART, "-n", ns, "-f", values)
    sts = admin_client.get(StatefulSet, "bulwark-ca-postgresql", namespace=ns)
    assert sts.spec is not None and sts.spec.replicas == 1
    assert sts.spec.volumeClaimTemplates and sts.spec.volumeClaimTemplates[0].spec is not None
    password = admin_client.get(Secret, "bulwark-ca-postgresql", namespace=ns).data
    dsn = admin_client.get(Secret, "bulwark-ca-record", namespace=ns).data
    assert password is not None and dsn is not None
    pw = base64.b64decode(password["password"]).decode()
    url = base64.b64decode(dsn["url"]).decode()
    assert (
        url
        == f"postgresql://bulwark:{pw}@bulwark-ca-postgresql.{ns}.svc:5432/bulwark?sslmode=disable"
    )
    kube_helm("upgrade", "bulwark", CHART, "-n", ns, "-f", values)
    again = admin_client.get(Secret, "bulwark-ca-record", namespace=ns).data
    assert again is not None and again["url"] == dsn["url"], "upgrade changed the database password"
    kube_helm("uninstall", "bulwark", "-n", ns)

    single = make_namespace("helm-one")
    kube_helm("install", "bulwark", CHART, "-n", single)
    pvc = admin_client.get(PersistentVolumeClaim, "bulwark-ca-data", namespace=single)
    assert pvc.spec is not None and pvc.spec.accessModes == ["ReadWriteOnce"]
    kube_helm("uninstall", "bulwark", "-n", single)
    admin_client.get(PersistentVolumeClaim, "bulwark-ca-data", namespace=single)
    admin_client.get(Namespace, single)


def test_helm_refuses_to_install_replicas_on_sqlite(
    kube_helm: Callable[..., str], admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("helm-bad")
    err = kube_helm("install", "bulwark", CHART, "-n", ns, "--set", "replicaCount=2", ok=False)
    assert "postgresql" in err
    with pytest.raises(ApiError):
        admin_client.get(Deployment, "bulwark-ca", namespace=ns)
