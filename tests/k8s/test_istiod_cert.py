"""istiod's XDS serving certificate (issue #15 item 4) against the real kube-apiserver.

The leader writes `istiod-tls` (kubernetes.io/tls: tls.crt, tls.key, ca.crt) with istiod's
Service names, signed by the key workloads are signed with, and renews it at half-life, on
a root change or a change of DNS names; a follower never writes; a Secret of another type
is left alone. A real CA process, with only the chart's RBAC for that Secret, writes it.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from ca_server.authority.material import CaMaterial, DirectoryKeyStore, load_or_create
from ca_server.kube.istiod_cert import IstiodCertSecretError, IstiodCertWriter
from ca_server.kube.settings import ISTIOD_SERVICE_NAMES, IstiodCertSettings
from certs.pem import load_certificates
from certs.spiffe_id import TrustDomain
from tests.k8s.conftest import CA_NAMESPACE
from tests.support.ca_process import start_ca
from tests.support.deploy_tools import CHART, run, tool
from tests.support.kube_harness import ControlPlane

EXTRA = "istiod.mesh.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def material(tmp: Path) -> CaMaterial:
    return load_or_create(DirectoryKeyStore(tmp), TrustDomain("cluster.local"), datetime.now(UTC))


def secret(client: Client, ns: str, name: str = "istiod-tls") -> Secret | None:
    try:
        return client.get(Secret, name, namespace=ns)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def field(s: Secret, key: str) -> bytes:
    assert s.data is not None
    return base64.b64decode(s.data[key])


def leaf(s: Secret) -> x509.Certificate:
    return load_certificates(field(s, "tls.crt"))[0]


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def writer(
    client: Client,
    ns: str,
    held: list[CaMaterial],
    *,
    leader: Callable[[], bool] = lambda: True,
    clock: Clock | None = None,
    dns: tuple[str, ...] = (*ISTIOD_SERVICE_NAMES, EXTRA),
) -> IstiodCertWriter:
    settings = IstiodCertSettings(namespace=ns, dns_names=dns, ttl=timedelta(hours=2))
    return IstiodCertWriter(
        client,
        settings,
        material=lambda: held[0],
        is_leader=leader,
        clock=clock or Clock(),
    )


def openssl_verify(tmp: Path, s: Secret) -> None:
    """OpenSSL, not our code, says the chain verifies to ca.crt as a TLS server."""
    (tmp / "ca.crt").write_bytes(field(s, "ca.crt"))
    (tmp / "tls.crt").write_bytes(field(s, "tls.crt"))
    proc = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", tmp / "ca.crt", tmp / "tls.crt"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_leader_writes_istiod_tls_chaining_to_the_root(
    admin_client: Client, make_namespace: Callable[[str], str], tmp_path: Path
) -> None:
    ns = make_namespace("istiod")
    held = [material(tmp_path / "ca")]
    assert writer(admin_client, ns, held).check() == "missing or unreadable"
    s = secret(admin_client, ns)
    assert s is not None and s.type == "kubernetes.io/tls"
    assert set(s.data or {}) == {"tls.crt", "tls.key", "ca.crt"}
    assert field(s, "ca.crt").decode() == held[0].root_bundle_pem
    assert dns_names(leaf(s)) == sorted((*ISTIOD_SERVICE_NAMES, EXTRA))
    openssl_verify(tmp_path, s)


def test_current_certificate_is_kept_then_renewed_at_half_life(
    admin_client: Client, make_namespace: Callable[[str], str], tmp_path: Path
) -> None:
    ns = make_namespace("istiod")
    clock = Clock()
    w = writer(admin_client, ns, [material(tmp_path / "ca")], clock=clock)
    w.check()
    first = secret(admin_client, ns)
    assert first is not None and first.metadata is not None
    clock.now += timedelta(minutes=50)  # before half of a 2 h life
    assert w.check() is None
    same = secret(admin_client, ns)
    assert same is not None and same.metadata is not None
    assert same.metadata.resourceVersion == first.metadata.resourceVersion  # not rewritten
    clock.now += timedelta(minutes=15)  # 65 min: past half-life
    assert w.check() == "past half of its life"
    renewed = secret(admin_client, ns)
    assert renewed is not None
    assert leaf(renewed).serial_number != leaf(first).serial_number


def test_new_root_or_new_dns_names_reissue(
    admin_client: Client, make_namespace: Callable[[str], str], tmp_path: Path
) -> None:
    ns = make_namespace("istiod")
    held = [material(tmp_path / "ca")]
    writer(admin_client, ns, held).check()
    held[0] = material(tmp_path / "other-ca")  # a root rotation, as far as istiod can tell
    assert writer(admin_client, ns, held).check() == "not signed by the current signing certificate"
    s = secret(admin_client, ns)
    assert s is not None and field(s, "ca.crt").decode() == held[0].root_bundle_pem
    again = writer(admin_client, ns, held, dns=ISTIOD_SERVICE_NAMES)
    assert again.check() == "DNS names differ from the configured ones"
    s = secret(admin_client, ns)
    assert s is not None and dns_names(leaf(s)) == sorted(ISTIOD_SERVICE_NAMES)


def test_follower_never_writes(
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    ns = make_namespace("istiod")
    own = Client(config=KubeConfig.from_file(control_plane.admin_kubeconfig), trust_env=False)
    w = writer(own, ns, [material(tmp_path / "ca")], leader=lambda: False)  # stop() closes it
    assert w.check() is None
    w.start()
    time.sleep(3)
    w.stop()
    assert secret(admin_client, ns) is None


def test_secret_of_another_type_is_left_alone(
    admin_client: Client, make_namespace: Callable[[str], str], tmp_path: Path
) -> None:
    ns = make_namespace("istiod")
    admin_client.create(
        Secret(metadata=ObjectMeta(name="istiod-tls", namespace=ns), type="Opaque",
               data={"x": base64.b64encode(b"keep me").decode()}),
        namespace=ns,
    )  # fmt: skip
    with pytest.raises(IstiodCertSecretError, match="type Opaque"):
        writer(admin_client, ns, [material(tmp_path / "ca")]).check()
    s = secret(admin_client, ns)
    assert s is not None and field(s, "x") == b"keep me"


def chart_rbac(control_plane: ControlPlane) -> None:
    """The chart's Role and RoleBinding for istiod-tls, applied for the base's CA account."""
    proc = run(
        [tool("helm"), "template", "bulwark", CHART, "-n", CA_NAMESPACE, "--set", "mode=with-istio",
         "--set", "istiodCert.enabled=true", "--show-only", "templates/istiod-cert-rbac.yaml"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    applied = control_plane.kubectl_run("apply", "--server-side", "-f", "-", stdin=proc.stdout)
    assert applied.returncode == 0, applied.stderr


def test_ca_process_with_the_charts_rbac_keeps_istiod_tls(
    control_plane: ControlPlane, admin_client: Client, ca_kubeconfig: Path, tmp_path: Path
) -> None:
    chart_rbac(control_plane)
    ca = start_ca(
        tmp_path / "ca",
        "--kubeconfig", str(ca_kubeconfig), "--kube-namespace", CA_NAMESPACE,
        "--kube-identity", "istiod-cert-test", "--kube-resync", "1s",
        "--istiod-cert-secret", f"{CA_NAMESPACE}/istiod-tls", "--istiod-cert-dns-names", EXTRA,
        env={"KUBECONFIG": ""},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (s := secret(admin_client, CA_NAMESPACE)) is None:
            assert time.monotonic() < deadline, f"no istiod-tls within 30 s:\n{ca.log()}"
            time.sleep(0.5)
        # istiod and every workload chain to one root: the CA's own root-cert.pem.
        assert field(s, "ca.crt") == ca.root_cert_path.read_bytes()
        assert dns_names(leaf(s)) == sorted((*ISTIOD_SERVICE_NAMES, EXTRA))
        openssl_verify(tmp_path, s)
        admin_client.delete(Secret, "istiod-tls", namespace=CA_NAMESPACE)
        deadline = time.monotonic() + 30
        while secret(admin_client, CA_NAMESPACE) is None:  # deleted: the leader writes it again
            assert time.monotonic() < deadline, f"istiod-tls not rewritten:\n{ca.log()}"
            time.sleep(0.5)
        assert "Traceback" not in ca.log()
    finally:
        ca.stop()


def test_chart_value_is_for_with_istio_only_and_grants_one_secret() -> None:
    refused = run([tool("helm"), "template", "b", CHART, "--set", "istiodCert.enabled=true"])
    assert refused.returncode != 0 and "with-istio" in refused.stderr
    proc = run(
        [tool("helm"), "template", "b", CHART, "-n", CA_NAMESPACE, "--set", "mode=with-istio",
         "--set", "istiodCert.enabled=true", "--set", f"istiodCert.extraDnsNames={{{EXTRA}}}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BULWARK_ISTIOD_CERT_SECRET"] == "istio-system/istiod-tls"
    assert env["BULWARK_ISTIOD_CERT_DNS_NAMES"] == EXTRA
    (role,) = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("istiod-cert")
    ]
    named = [r for r in role["rules"] if "get" in r["verbs"]]
    assert named == [{"apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": ["istiod-tls"], "verbs": ["get", "update"]}]  # fmt: skip
