"""`make demo` runs end to end (the same script, without reinstalling the virtualenv), and says
what a newcomer needs (issue 22): no library warnings, labelled checks, and where the paths
it prints live (deleted at the end, or kept with `--keep`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ca_process import REPO


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(REPO / "demo/demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "==> summary" in result.stdout
    assert "eyJ" not in result.stdout, "tokens must never be printed"
    assert "PRIVATE KEY" not in result.stdout
    return result


@pytest.mark.slow
def test_demo_exits_zero_with_a_summary() -> None:
    result = demo()
    out = result.stdout
    assert "DSA is deprecated" not in out + result.stderr, "py-spiffe's import warning"
    for purpose in ("sslclient", "sslserver"):
        assert f"openssl verify -x509_strict -purpose {purpose}: leaf.pem: OK" in out
    assert not re.search(r"^leaf\.pem: OK$", out, re.MULTILINE), "an unlabelled openssl line"
    work = re.search(r"^\$ .* --socket (/\S+)/frontend\.sock ", out, re.MULTILINE)
    assert work is not None
    assert f"(the paths above are in {work.group(1)}, which the demo deletes when it ends" in out
    assert f"removed {work.group(1)} (--keep keeps it)" in out
    assert not Path(work.group(1)).exists()


@pytest.mark.slow
def test_demo_keep_keeps_the_directory_and_says_how_to_use_it() -> None:
    out = demo("--keep").stdout
    kept = re.search(r"^kept (/\S+)\. Its CA stopped with the demo", out, re.MULTILINE)
    assert kept is not None, out[-2000:]
    work = Path(kept.group(1))
    try:
        assert (work / "ca-data" / "root-cert.pem").is_file()
        assert (work / "frontend.token").is_file() and (work / "backend.token").is_file()
        ports = re.search(r"CA gRPC \(TLS\) on (\S+), admin on http://(\S+)", out)
        assert ports is not None
        serve = f"bulwark ca serve --data-dir {work}/ca-data --grpc-addr {ports.group(1)} "
        assert serve in out and f"--admin-addr {ports.group(2)}" in out
        assert f"Remove it with: rm -rf {work}" in out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_make_venv_installs_quietly() -> None:
    """setuptools' "editable installation" banner is a warning: `pip -qq` shows errors only."""
    dry = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "venv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (install,) = [line for line in dry.splitlines() if " pip install " in line and " -e " in line]
    assert " -qq " in install, install
