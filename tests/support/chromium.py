"""Headless Chromium (Debian's `chromium`) for the web view tests: DOM dumps and screenshots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium() -> str:
    """The browser, or a loud failure: `make test` installs it (apt-get install chromium)."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None:
        raise AssertionError(
            "chromium is not installed: run `make test` (it installs Debian's chromium) "
            "or `apt-get install -y chromium`"
        )
    return found


def run(profile: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}"
    )
    return result


def dump_dom(profile: Path, url: str) -> str:
    return run(profile, "--dump-dom", url).stdout


def screenshot(profile: Path, url: str, out: Path, size: str = "1400,1700") -> Path:
    run(profile, f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", url)
    assert out.exists() and out.stat().st_size > 10_000, f"no usable screenshot at {out}"
    return out
