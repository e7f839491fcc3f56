"""What the fault suite needs around a real CA: load that records what clients saw, the
record check, a small tmpfs, a PostgreSQL restart, and the per-fault summary line."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ca_process import RunningCa
from tests.support.load import Load
from tests.support.postgres import POSTGRES_USER, PostgresCluster
from tests.support.record_processes import recorded_serials, verify


def nothing_lost(url: str, load: Load, label: str) -> int:
    """Every certificate a client received is in the record and the hash chain verifies."""
    received = load.received()
    recorded = set(recorded_serials(url))
    missing = set(received) - recorded
    assert not missing, f"{label}: {len(missing)} certificates received but not recorded"
    report = verify(url)
    assert report.ok, f"{label}: chain broken: {report.broken}"
    return len(received)


def summary(fault: str, **numbers: object) -> None:
    """One line per fault (run with -s to see them): what clients saw, recovery, data lost."""
    print(f"\nFAULT {json.dumps({'fault': fault, **numbers}, sort_keys=True)}", flush=True)


@contextmanager
def small_tmpfs(path: Path, size: str = "64m") -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only; mount failure is a test failure, never a skip).

    The default leaves a CA under full load about a minute before its record alone fills it
    (about 1 MB/s), so a test on a slow machine fills it with `fill` first, when it means to.
    """
    path.mkdir(mode=0o700)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"cannot mount a tmpfs here (needs root): {result.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> Path:
    """Write zeros into `path/filler` until the file system is full."""
    filler = path / "filler"
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    # Fill what the last chunk left: single bytes.
    try:
        with open(filler, "ab", buffering=0) as out:
            while True:
                out.write(b"\0" * 512)
    except OSError:
        pass
    return filler


def restart_postgres(cluster: PostgresCluster) -> float:
    """`pg_ctl restart -m immediate` (a crash and recovery); seconds it took."""
    log = str(cluster.base_dir / "server.log")  # else the server keeps our output pipe open
    argv = [str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "-l", log, "-w"]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", POSTGRES_USER, "--", *argv]
    started = time.monotonic()
    subprocess.run([*argv, "-m", "immediate", "restart"], check=True, capture_output=True)
    return time.monotonic() - started


def admin_get(ca: RunningCa, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{ca.admin_url}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_value(ca: RunningCa, name: str) -> float:
    import re

    _, text = admin_get(ca, "/metrics")
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, f"{name} is not exported"
    return float(found.group(1))
