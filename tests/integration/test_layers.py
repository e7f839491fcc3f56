"""The layer contracts `make lint` checks (import-linter, `[tool.importlinter]` in pyproject):
they hold on this tree, and they break when certs imports the CA, the agent imports the CA,
the request pipeline imports the process model or a CA subpackage imports one above it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_tree(dest: Path) -> Path:
    for name in ("certs", "ca_server", "agent", "protos"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: make venv installs import-linter"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )


def test_the_contracts_hold_on_this_tree(tmp_path: Path) -> None:
    result = _lint(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("certs/pem.py", "from ca_server.errors import CaError  # noqa"),
        ("certs/spiffe_id.py", "import agent.config  # noqa"),
        ("agent/state/svid.py", "from ca_server.issuance.signer import Signer  # noqa"),
        ("ca_server/issuance/signer.py", "from ca_server.process import pool  # noqa"),
        ("ca_server/authority/material.py", "from ca_server.issuance import refusals  # noqa"),
        ("ca_server/record/entry.py", "import ca_server.assembly  # noqa"),
        ("ca_server/assembly.py", "from ca_server.admin import app  # noqa"),
        # upward through a shared top-level module: kube -> config -> spiffe
        ("ca_server/config.py", "from ca_server.spiffe import bundle  # noqa"),
    ],
)
def test_an_import_against_the_layers_fails_lint(tmp_path: Path, module: str, line: str) -> None:
    tree = _copy_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
