"""`bulwark kube create-remote-secret` against a real remote cluster (with its token controller):
what it creates there, that a re-run reuses it, and how it fails.

The remote cluster is the session's `remote_plane`; each test uses its own namespace, so the
multicluster suite's account in istio-system is left alone.
"""

from __future__ import annotations

import base64
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.resources.core_v1 import Namespace, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

from ca_server.kube.remote_access import REMOTE_RULES
from tests.support.ca_process import REPO, tree_env
from tests.support.kube_harness import ControlPlane, write_kubeconfig

BULWARK = str(REPO / ".venv/bin/bulwark")


def create(remote: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BULWARK, "kube", "create-remote-secret", "--kubeconfig", str(remote.admin_kubeconfig),
         "--wait", "30s", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env=tree_env({"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}),
    )  # fmt: skip


def secret_of(text: str) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(text) if d]
    assert isinstance(doc, dict)
    return doc


def kubeconfig_of(doc: dict[str, Any]) -> dict[str, Any]:
    [value] = doc["stringData"].values()
    config = yaml.safe_load(value)
    assert isinstance(config, dict)
    return config


def test_grants_exactly_the_cas_rbac_and_prints_istioctls_shape(
    remote_plane: ControlPlane, remote_admin: Client
) -> None:
    ns = f"ca-{uuid.uuid4().hex[:6]}"
    proc = create(remote_plane, "--name", "east", "--namespace", ns, "--service-account", "mesh-ca")
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.1" in proc.stderr and "--server" in proc.stderr  # istioctl's warning too
    doc = secret_of(proc.stdout)
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Secret"
    assert doc["metadata"] == {
        "annotations": {"networking.istio.io/cluster": "east"},
        "labels": {"istio/multiCluster": "true"},
        "name": "istio-remote-secret-east",
        "namespace": ns,
    }
    config = kubeconfig_of(doc)
    assert config["current-context"] == "east"
    assert config["contexts"] == [{"name": "east", "context": {"cluster": "east", "user": "east"}}]
    [cluster] = config["clusters"]
    assert cluster["name"] == "east" and cluster["cluster"]["server"] == remote_plane.url
    ca = base64.b64decode(cluster["cluster"]["certificate-authority-data"])
    assert ca == remote_plane.ca_file.read_bytes()
    [user] = config["users"]
    token = user["user"]["token"]
    assert user["name"] == "east" and token.count(".") == 2

    role = remote_admin.get(ClusterRole, f"mesh-ca-{ns}")
    assert [r.to_dict() for r in role.rules or []] == [r.to_dict() for r in REMOTE_RULES]
    binding = remote_admin.get(ClusterRoleBinding, f"mesh-ca-{ns}")
    assert binding.roleRef.name == f"mesh-ca-{ns}"
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects or []] == [
        ("ServiceAccount", "mesh-ca", ns)
    ]
    remote_admin.get(ServiceAccount, "mesh-ca", namespace=ns)
    stored = remote_admin.get(Secret, "mesh-ca-token", namespace=ns)
    assert stored.type == "kubernetes.io/service-account-token"
    assert base64.b64decode((stored.data or {})["token"]).decode() == token

    again = create(
        remote_plane, "--name", "east", "--namespace", ns, "--service-account", "mesh-ca"
    )
    assert again.returncode == 0, again.stderr
    assert kubeconfig_of(secret_of(again.stdout))["users"][0]["user"]["token"] == token
    tokens = [
        s
        for s in remote_admin.list(Secret, namespace=ns)
        if s.type == "kubernetes.io/service-account-token"
    ]
    assert len(tokens) == 1, "a re-run reuses the account's token Secret"


def test_the_printed_secret_is_valid_for_the_api_server(
    remote_plane: ControlPlane, control_plane: ControlPlane
) -> None:
    ns = f"ca-{uuid.uuid4().hex[:6]}"
    proc = create(remote_plane, "--name", "west", "--namespace", ns)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.replace(f"namespace: {ns}", "namespace: default")
    applied = control_plane.kubectl_run("apply", "--dry-run=server", "-f", "-", stdin=text)
    assert applied.returncode == 0, applied.stderr


def test_without_a_name_the_cluster_is_named_by_kube_system_uid(
    remote_plane: ControlPlane, remote_admin: Client
) -> None:
    proc = create(remote_plane, "--namespace", f"ca-{uuid.uuid4().hex[:6]}")
    assert proc.returncode == 0, proc.stderr
    uid = remote_admin.get(Namespace, "kube-system").metadata.uid  # type: ignore[union-attr]
    assert list(secret_of(proc.stdout)["stringData"]) == [uid]


def test_output_file_is_private_and_stdout_stays_empty(
    remote_plane: ControlPlane, tmp_path: Path
) -> None:
    out = tmp_path / "remote-secret.yaml"
    proc = create(remote_plane, "--name", "north", "--namespace", f"ca-{uuid.uuid4().hex[:6]}",
                  "--server", "https://10.1.2.3:6443", "--output-file", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = kubeconfig_of(secret_of(out.read_text()))
    assert config["clusters"][0]["cluster"]["server"] == "https://10.1.2.3:6443"


def test_refusals_are_one_line_without_a_token(remote_plane: ControlPlane, tmp_path: Path) -> None:
    bad_name = create(remote_plane, "--name", "Not_A_Label")
    assert bad_name.returncode == 2
    assert bad_name.stderr.count("\n") == 1 and "DNS-1123 label" in bad_name.stderr

    unreachable = tmp_path / "gone.kubeconfig"
    write_kubeconfig(unreachable, server="https://127.0.0.1:9", ca_file=remote_plane.ca_file,
                     token="abc.def.ghi")  # fmt: skip
    proc = subprocess.run(
        [BULWARK, "kube", "create-remote-secret", "--kubeconfig", str(unreachable),
         "--name", "south", "--server", "https://10.0.0.1:6443"],
        capture_output=True, text=True, timeout=120, check=False,
        env=tree_env({"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("bulwark kube create-remote-secret: ")
    assert "Traceback" not in proc.stderr and "abc.def.ghi" not in proc.stderr
    assert proc.stdout == ""
