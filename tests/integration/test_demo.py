"""`make demo` runs end to end (the same script, without reinstalling the virtualenv)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.ca_process import REPO


@pytest.mark.slow
def test_demo_exits_zero_with_a_summary() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "demo/demo.py")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "==> summary" in result.stdout
    assert "eyJ" not in result.stdout, "tokens must never be printed"
    assert "PRIVATE KEY" not in result.stdout
