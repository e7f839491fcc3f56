"""The container image is built from lock files only: every runtime dependency pinned with
sha256 hashes (pip-tools), the build backend too, and the image runs as non-root.

(Checked offline; the lock itself was verified by installing it with --require-hashes into
a clean Python 3.11 venv and running `python -m ca_server --help`, `bulwark --help`, and
`python -m agent run --help`.)"""

from __future__ import annotations

import re
import tomllib

from tests.support.deploy_tools import REPO

DEPLOY = REPO / "deploy"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\$")


def _pins(text: str) -> dict[str, int]:
    """name -> number of hashes, for each `name==version` entry of a pip-compile lock."""
    pins: dict[str, int] = {}
    current = ""
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            current = match.group(1).lower().replace("_", "-")
            pins[current] = 0
        elif line.strip().startswith("--hash=sha256:") and current:
            pins[current] += 1
    return pins


def _name(requirement: str) -> str:
    return re.split(r"[<>=\[;! ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_locked_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins((DEPLOY / "requirements.lock").read_text())
    for requirement in project["dependencies"]:
        assert _name(requirement) in pins, f"{requirement} is not in deploy/requirements.lock"
    assert all(count >= 1 for count in pins.values()), pins
    build = _pins((DEPLOY / "build-requirements.lock").read_text())
    assert {"setuptools", "wheel"} <= set(build)
    assert all(count >= 1 for count in build.values()), build


def test_dockerfile_installs_only_from_the_locks_and_runs_as_non_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    for line in installs:
        assert "--no-deps" in line, line
        assert "--require-hashes" in line or line.rstrip().endswith(" ."), line
    assert "--no-build-isolation" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] != "0" and users[-1] != "root"
