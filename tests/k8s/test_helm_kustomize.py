"""One source for the manifests: deploy/base is rendered from the Helm chart, and each
kustomize overlay builds to exactly the objects the chart renders with the matching values
file. Also the traps of issue #15: no overlay carries a Namespace (so `kubectl delete -k`
cannot delete istio-system), and the admin API always has a token file."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.deploy_tools import CHART, REPO, run, tool

DEPLOY = REPO / "deploy"
PAIRS = {  # kustomize directory -> chart values that must render the same objects
    "base": "kustomize-base-values.yaml",
    "overlays/production": "kustomize-production-values.yaml",
    "overlays/plugged-ca": "kustomize-plugged-ca-values.yaml",
    "overlays/with-istio": "kustomize-with-istio-values.yaml",
}


def _renderer() -> ModuleType:
    path = DEPLOY / "helm" / "render-kustomize.py"
    spec = importlib.util.spec_from_file_location("render_kustomize", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}


def kustomize_build(directory: str) -> list[dict[str, Any]]:
    proc = run([tool("kustomize"), "build", DEPLOY / directory])
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def chart_render(values: str) -> list[dict[str, Any]]:
    proc = run(
        [
            tool("helm"),
            "template",
            "bulwark",
            CHART,
            "-n",
            "istio-system",
            "-f",
            CHART / "ci" / values,
        ]
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    strip = _renderer()._strip_helm
    for doc in docs:
        strip(doc)
    return docs


def test_base_is_what_the_chart_renders() -> None:
    proc = run(
        ["python3", DEPLOY / "helm" / "render-kustomize.py", "--helm", tool("helm"), "--check"]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("directory", sorted(PAIRS))
def test_kustomize_tree_matches_the_chart(directory: str) -> None:
    built = _by_name(kustomize_build(directory))
    rendered = _by_name(chart_render(PAIRS[directory]))
    assert sorted(built) == sorted(rendered)
    for key, doc in rendered.items():
        assert built[key] == doc, f"{directory}: {key} differs from the chart's"


@pytest.mark.parametrize("directory", sorted(PAIRS))
def test_no_namespace_object_and_admin_token_everywhere(directory: str) -> None:
    """Issue #15: every overlay carried Namespace istio-system, so `kubectl delete -k
    deploy/overlays/with-istio` deleted Istio's namespace; and deploy/base bound the admin
    API on 0.0.0.0 without a token file, so `bulwark certs` could never be used."""
    docs = kustomize_build(directory)
    assert not [d for d in docs if d["kind"] == "Namespace"]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--admin-token-file=/etc/bulwark/admin/token" in container["args"]
    (volume,) = [
        v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "admin-token"
    ]
    assert volume["secret"]["secretName"] == "bulwark-admin-token"


def test_namespace_kustomization_is_separate() -> None:
    docs = kustomize_build("namespace")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("Namespace", "istio-system")]


def test_make_manifests_uses_kustomize_not_the_api_server(tmp_path: Path) -> None:
    """`make manifests` once built kube-apiserver and etcd just to run `kubectl kustomize`."""
    proc = run(["make", "-C", REPO, "-n", "manifests"])
    assert proc.returncode == 0, proc.stderr
    assert "build-tool.sh kustomize" in proc.stdout
    assert "build-peers.sh" not in proc.stdout
