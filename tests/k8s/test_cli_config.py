"""`bulwark ca serve` refuses a Kubernetes configuration it cannot use, saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.ca_process import REPO


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ca_server",
            "--data-dir",
            str(tmp_path / "d"),
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_in_cluster_outside_a_pod_is_a_clear_startup_error(tmp_path: Path) -> None:
    proc = serve(tmp_path, "--kube-in-cluster")
    assert proc.returncode == 2, proc.stderr
    assert "--kube-in-cluster needs KUBERNETES_SERVICE_HOST" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_kubeconfig_is_a_clear_startup_error(tmp_path: Path) -> None:
    proc = serve(tmp_path, "--kubeconfig", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2, proc.stderr
    assert "is not a readable file" in proc.stderr
