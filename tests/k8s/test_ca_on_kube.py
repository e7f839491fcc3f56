"""Two real CA replicas (`python -m ca_server --kubeconfig ...`) against the real API server,
authenticated as istio-system/bulwark-ca with the RBAC of deploy/base.

Tests run in file order on one pair of replicas; the last one kills the leader.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lightkube import ApiError, Client
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret, ServiceAccount

from certs.csr import build_csr
from certs.keys import KeyType, generate_key
from certs.pem import load_certificates
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid
from tests.k8s.conftest import CA_NAMESPACE, create_service_account, render, request_token
from tests.support.ca_client import (
    channel,
    create_certificate,
    fetch_trust_bundle,
    mint_jwt_svid,
    validate_jwt_svid,
)
from tests.support.ca_process import RunningCa, start_ca
from tests.support.kube_harness import ControlPlane

LEASE_SECONDS = 4.0
RETRY_SECONDS = LEASE_SECONDS * 2 / 15  # as settings_from_args derives it
FRONTEND = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/frontend")
CM = "istio-ca-root-cert"


def wait_for(cond: Callable[[], bool], seconds: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def children_of(pid: int) -> list[int]:
    """Direct children (the CA's worker processes), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_replica(ca: RunningCa) -> None:
    """SIGKILL the supervisor and its workers together, as when a pod dies."""
    assert ca.process is not None
    pids = [ca.process.pid, *children_of(ca.process.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    ca.process.wait(10)


@pytest.fixture(scope="module")
def replicas(
    ca_kubeconfig: Path, admin_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RunningCa]]:
    base = tmp_path_factory.mktemp("replicas")
    started: dict[str, RunningCa] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = start_ca(
                base / name,
                "--kubeconfig",
                str(ca_kubeconfig),
                "--kube-namespace",
                CA_NAMESPACE,
                "--kube-identity",
                name,
                "--kube-lease-duration",
                str(LEASE_SECONDS),
                env={"KUBECONFIG": ""},
            )
        except BaseException as exc:  # reported below with the CA's log
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("ca-0", "ca-1")]
    for t in threads:
        t.start()  # at the same time: both race to create istio-ca-secret
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        yield started
    finally:
        for ca in started.values():
            if ca.process is not None and ca.process.poll() is None:
                ca.stop()


@pytest.fixture(scope="module")
def frontend_account(admin_client: Client) -> str:
    try:
        create_service_account(admin_client, "default", "frontend")
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    return "frontend"


def issue(ca: RunningCa, token: str | None, identity: SpiffeId = FRONTEND) -> list[str]:
    key = generate_key(KeyType.EC_P256)
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        return create_certificate(chan, build_csr(key, identity), token=token)


def secret_root(admin_client: Client) -> bytes:
    secret = admin_client.get(Secret, "istio-ca-secret", namespace=CA_NAMESPACE)
    assert secret.type == "istio.io/ca-root" and secret.data is not None
    return base64.b64decode(secret.data["root-cert.pem"])


def test_replicas_started_together_share_one_root(
    replicas: dict[str, RunningCa], admin_client: Client
) -> None:
    root = secret_root(admin_client)
    for ca in replicas.values():
        assert ca.root_cert_path.read_bytes() == root
    secrets = [
        s
        for s in admin_client.list(Secret, namespace="istio-system")
        if s.metadata is not None and s.metadata.name == "istio-ca-secret"
    ]
    assert len(secrets) == 1


def test_tokenrequest_token_gets_a_frontend_certificate_from_each_replica(
    replicas: dict[str, RunningCa], admin_client: Client, frontend_account: str
) -> None:
    token = request_token(admin_client, "default", frontend_account, audiences=["istio-ca"])
    for ca in replicas.values():
        chain = issue(ca, token)
        assert len(chain) == 2
        certs = [load_certificates(pem)[0] for pem in chain]
        roots = load_certificates(ca.root_cert_path.read_bytes())
        assert verify_svid(certs[:-1], roots, now=datetime.now(UTC)) == FRONTEND
        san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(FRONTEND)]


def test_a_jwt_svid_from_one_replica_validates_with_the_other_replicas_bundle(
    replicas: dict[str, RunningCa], admin_client: Client, frontend_account: str
) -> None:
    """Issue 22.5, with the RBAC of deploy/base: one JWT key set in Secret bulwark-jwt-keys."""
    token = request_token(admin_client, "default", frontend_account, audiences=["istio-ca"])
    backend = "spiffe://cluster.local/ns/default/sa/backend"
    bundles = converged_bundles(replicas, token)
    with channel(replicas["ca-0"].grpc_addr, replicas["ca-0"].root_cert_path) as chan:
        svid = mint_jwt_svid(chan, token=token, audiences=[backend])
    claims = validate_jwt_svid(svid, bundles["ca-1"], backend)
    assert claims["sub"] == str(FRONTEND)
    secret = admin_client.get(Secret, "bulwark-jwt-keys", namespace=CA_NAMESPACE)
    assert secret.data is not None and "keys.json" in secret.data


def converged_bundles(
    replicas: dict[str, RunningCa], token: str, timeout_s: float = 45.0
) -> dict[str, dict[str, Any]]:
    """Each replica's bundle, once all publish the same one. A replica adopts the shared key
    set at its next key tick (10 s here), so right after a change (the first start's keys,
    a key published ahead) they may differ for a tick or two; they must not stay apart."""
    deadline = time.monotonic() + timeout_s
    while True:
        bundles = {}
        for name, ca in replicas.items():
            with channel(ca.grpc_addr, ca.root_cert_path) as chan:
                bundles[name] = fetch_trust_bundle(chan, token=token)
        if len({json.dumps(b, sort_keys=True) for b in bundles.values()}) == 1:
            return bundles
        sequences = {name: b.get("spiffe_sequence") for name, b in bundles.items()}
        assert time.monotonic() < deadline, f"the replicas publish different bundles: {sequences}"
        time.sleep(1.0)


def unauthenticated(ca: RunningCa, token: str, identity: SpiffeId = FRONTEND) -> None:
    with pytest.raises(grpc.RpcError) as info:
        issue(ca, token, identity)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()


def test_other_audience_is_unauthenticated(
    replicas: dict[str, RunningCa], admin_client: Client, frontend_account: str
) -> None:
    token = request_token(admin_client, "default", frontend_account, audiences=["other"])
    unauthenticated(replicas["ca-0"], token)


def test_deleted_service_account_is_unauthenticated(
    replicas: dict[str, RunningCa], admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("deleted")
    create_service_account(admin_client, ns, "gone")
    token = request_token(admin_client, ns, "gone", audiences=["istio-ca"])
    admin_client.delete(ServiceAccount, "gone", namespace=ns)
    unauthenticated(
        replicas["ca-1"],
        token,
        SpiffeId.for_service_account(TrustDomain("cluster.local"), ns, "gone"),
    )


def test_token_signed_by_another_key_is_unauthenticated(
    replicas: dict[str, RunningCa], admin_client: Client, frontend_account: str
) -> None:
    real = request_token(admin_client, "default", frontend_account, audiences=["istio-ca"])
    header = json.loads(base64.urlsafe_b64decode(real.split(".")[0] + "=="))
    claims = json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "=="))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other, algorithm="RS256", headers={"kid": header.get("kid")})
    unauthenticated(replicas["ca-0"], forged)


def configmap_root(admin_client: Client, ns: str) -> bytes | None:
    try:
        cm = admin_client.get(ConfigMap, CM, namespace=ns)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    labels = (cm.metadata.labels if cm.metadata else None) or {}
    if labels.get("istio.io/config") != "true" or not cm.data:
        return None
    root: str = cm.data.get("root-cert.pem", "")
    return root.encode()


def test_root_configmap_appears_and_is_repaired_within_5s(
    replicas: dict[str, RunningCa], admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    root = secret_root(admin_client)
    ns = make_namespace("mesh")
    wait_for(lambda: configmap_root(admin_client, ns) == root, 5, "ConfigMap in a new namespace")
    admin_client.delete(ConfigMap, CM, namespace=ns)
    wait_for(lambda: configmap_root(admin_client, ns) == root, 5, "ConfigMap after deletion")
    cm = admin_client.get(ConfigMap, CM, namespace=ns)
    cm.data = {"root-cert.pem": "edited"}
    admin_client.replace(cm)
    wait_for(lambda: configmap_root(admin_client, ns) == root, 5, "ConfigMap after an edit")
    assert configmap_root(admin_client, "kube-public") is None


def example_container(control_plane: ControlPlane, name: str) -> dict[str, Any]:
    import yaml

    docs = yaml.safe_load_all(render(control_plane, "examples/workload"))
    (deploy,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = [
        c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return dict(container)


def test_agent_in_a_pod_layout_gets_its_certificate(
    replicas: dict[str, RunningCa],
    admin_client: Client,
    make_namespace: Callable[[str], str],
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """The agent sidecar of deploy/examples/workload, run with its own args and env, set up
    as the kubelet would: a pod-bound projected token (audience istio-ca) and the
    istio-ca-root-cert ConfigMap as its root file. `/var/run/secrets` maps to a short temp
    dir (unix socket paths are limited); the CA address is the replica's loopback port."""
    ns = make_namespace("pod")
    create_service_account(admin_client, ns, "web")
    pod = admin_client.create(
        Pod(
            metadata=ObjectMeta(name="web-0", namespace=ns),
            spec=PodSpec(
                serviceAccountName="web",
                containers=[Container(name="app", image="example.invalid/app")],
            ),
        )
    )
    assert pod.metadata is not None and pod.metadata.uid
    wait_for(lambda: configmap_root(admin_client, ns) is not None, 5, "root ConfigMap")
    secrets = Path(tempfile.mkdtemp(prefix="pod", dir="/tmp"))
    (secrets / "istio").mkdir()
    (secrets / "istio/root-cert.pem").write_bytes(configmap_root(admin_client, ns) or b"")
    (secrets / "tokens").mkdir()
    (secrets / "tokens/istio-token").write_text(
        request_token(
            admin_client, ns, "web", audiences=["istio-ca"], pod=("web-0", pod.metadata.uid)
        )
    )
    out = tmp_path / "out"
    ca = next(iter(r for r in replicas.values() if r.process and r.process.poll() is None))
    sidecar = example_container(control_plane, "bulwark-agent")
    args = []
    for arg in sidecar["args"]:
        if arg.startswith("--ca-addr="):  # loopback port; the name the Service address had
            host = arg.split("=", 1)[1].rsplit(":", 1)[0]
            args += [f"--ca-addr={ca.grpc_addr}", f"--istiod-san={host}"]
            continue
        args.append(arg.replace("/var/run/secrets", str(secrets)))
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    env |= {"POD_NAMESPACE": ns, "SERVICE_ACCOUNT": "web"}  # the downward API's part
    agent_log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [
            sys.executable,
            *sidecar["command"][1:],
            *args,
            f"--output-certs={out}",
            "--status-addr=",
        ],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=agent_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (out / "cert-chain.pem").exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                agent.kill()
                agent.wait(10)
                pytest.fail("agent got no certificate:\n" + agent_log.read_text()[-3000:])
            time.sleep(0.1)
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(15)
        shutil.rmtree(secrets, ignore_errors=True)
    leaf = load_certificates((out / "cert-chain.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://cluster.local/ns/{ns}/sa/web"
    ]
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600


def holder(admin_client: Client) -> str:
    lease = admin_client.get(Lease, "bulwark-ca-leader", namespace=CA_NAMESPACE)
    return (lease.spec.holderIdentity if lease.spec else None) or ""


def test_leader_kill_hands_over_within_the_lease_duration(
    replicas: dict[str, RunningCa],
    admin_client: Client,
    make_namespace: Callable[[str], str],
    frontend_account: str,
) -> None:
    wait_for(lambda: holder(admin_client) in replicas, 10, "a leader")
    leader = holder(admin_client)
    (survivor,) = [n for n in replicas if n != leader]
    kill_replica(replicas[leader])
    took = wait_for(
        lambda: holder(admin_client) == survivor,
        LEASE_SECONDS + 2 * RETRY_SECONDS + 1,
        "leadership handover",
    )
    assert took <= LEASE_SECONDS + 2 * RETRY_SECONDS + 1
    root = secret_root(admin_client)
    ns = make_namespace("after")
    wait_for(lambda: configmap_root(admin_client, ns) == root, 5, "ConfigMap under the new leader")
    admin_client.delete(ConfigMap, CM, namespace=ns)
    wait_for(lambda: configmap_root(admin_client, ns) == root, 5, "repair under the new leader")
    token = request_token(admin_client, "default", frontend_account, audiences=["istio-ca"])
    assert len(issue(replicas[survivor], token)) == 2
