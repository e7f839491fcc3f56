"""Locate helm, kustomize, promtool and kube-controller-manager for the Kubernetes tests.

`make test-k8s` passes their paths (BULWARK_HELM, BULWARK_KUSTOMIZE, BULWARK_PROMTOOL,
BULWARK_KUBE_CONTROLLER_MANAGER); run alone, a test builds the missing one with
tests/k8s/build-tool.sh (kube-controller-manager: tests/k8s/build-controller-manager.sh; cached,
cold builds take minutes). A tool that cannot be built fails the test with the build's output,
never skips it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOL = REPO / "tests" / "k8s" / "build-tool.sh"
BUILD_CONTROLLER_MANAGER = REPO / "tests" / "k8s" / "build-controller-manager.sh"
CHART = REPO / "deploy" / "helm" / "bulwark"
ENV = {
    "helm": "BULWARK_HELM",
    "kustomize": "BULWARK_KUSTOMIZE",
    "promtool": "BULWARK_PROMTOOL",
    "kube-controller-manager": "BULWARK_KUBE_CONTROLLER_MANAGER",
}


def tool(name: str) -> Path:
    """Path of a built tool: from the environment, else from the (cached) build."""
    given = os.environ.get(ENV[name])
    if given:
        path = Path(given)
    else:
        argv = (
            [str(BUILD_CONTROLLER_MANAGER)]
            if name == "kube-controller-manager"
            else [str(BUILD_TOOL), name]
        )
        proc = subprocess.run(["bash", *argv], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"building {name} failed:\n{proc.stderr[-4000:]}")
        path = Path(proc.stdout.strip().splitlines()[-1])
    assert os.access(path, os.X_OK), f"{path} is not an executable {name}"
    return path


def run(
    argv: list[str | Path], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool with no inherited kubeconfig or Helm state (HOME-independent dirs)."""
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
