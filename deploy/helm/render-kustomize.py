#!/usr/bin/env python3
"""Render deploy/base from the Helm chart, so the chart is the one source of the manifests.

    deploy/helm/render-kustomize.py --helm PATH            rewrite deploy/base/*.yaml
    deploy/helm/render-kustomize.py --helm PATH --check    exit 1 if deploy/base is stale

`helm template` with ci/kustomize-base-values.yaml (release `bulwark`, namespace istio-system),
minus Helm's own bookkeeping labels, split into one file per concern. deploy/base/
kustomization.yaml and the overlays are written by hand on top of it.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "bulwark"
VALUES = CHART / "ci" / "kustomize-base-values.yaml"
BASE = HERE.parent / "base"
RELEASE, NAMESPACE = "bulwark", "istio-system"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
FILES = {  # kind -> file in deploy/base
    "ServiceAccount": "serviceaccount.yaml",
    "Secret": "secret.yaml",
    "ClusterRole": "rbac.yaml",
    "ClusterRoleBinding": "rbac.yaml",
    "Role": "rbac.yaml",
    "RoleBinding": "rbac.yaml",
    "PersistentVolumeClaim": "pvc.yaml",
    "Deployment": "deployment.yaml",
    "Service": "service.yaml",
    "PodDisruptionBudget": "pdb.yaml",
    "NetworkPolicy": "networkpolicy.yaml",
}
HEADER = (
    "# Generated from deploy/helm/bulwark (values ci/kustomize-base-values.yaml) by\n"
    "# deploy/helm/render-kustomize.py. Do not edit: change the chart and re-run it.\n"
)


def _strip_helm(node: object) -> None:
    """Drop Helm's bookkeeping labels wherever a `labels` map appears (metadata, templates)."""
    if isinstance(node, dict):
        labels = node.get("labels")
        if isinstance(labels, dict):
            for key in HELM_ONLY_LABELS:
                labels.pop(key, None)
        annotations = node.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop("helm.sh/resource-policy", None)
            if not annotations:
                del node["annotations"]
        for value in node.values():
            _strip_helm(value)
    elif isinstance(node, list):
        for item in node:
            _strip_helm(item)


def render(helm: str) -> dict[str, str]:
    """File name -> text, as deploy/base should hold it."""
    proc = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(VALUES)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"helm template failed:\n{proc.stderr}")
    grouped: dict[str, list[dict[str, object]]] = {}
    for doc in yaml.safe_load_all(proc.stdout):
        if not doc:
            continue
        kind = doc["kind"]
        if kind not in FILES:
            raise SystemExit(f"render-kustomize.py: no file for kind {kind}; add it to FILES")
        _strip_helm(doc)
        grouped.setdefault(FILES[kind], []).append(doc)
    return {
        name: HEADER
        + "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)
        for name, docs in grouped.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True, help="helm binary (tests/k8s/build-tool.sh helm)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    wanted = render(args.helm)
    stale = []
    for name, text in sorted(wanted.items()):
        path = BASE / name
        have = path.read_text() if path.exists() else ""
        if have == text:
            continue
        stale.append(name)
        if args.check:
            diff = difflib.unified_diff(
                have.splitlines(True), text.splitlines(True), f"deploy/base/{name}", "chart"
            )
            sys.stdout.writelines(diff)
        else:
            path.write_text(text)
            print(f"wrote deploy/base/{name}")
    if args.check and stale:
        print(f"deploy/base is stale ({', '.join(stale)}): run deploy/helm/render-kustomize.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
