"""What the fault suite needs around a real CA: load that records what clients saw, the
record check, a small tmpfs, a PostgreSQL restart, and the per-fault summary line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.ledger.processes import recorded_serials, verify
from tests.support.ca_process import REPO, RunningCa
from tests.support.postgres import POSTGRES_USER, PostgresCluster


@dataclass(frozen=True)
class Answer:
    at: float
    code: str  # "OK" or a gRPC status name
    serial: str | None


class Load:
    """`tests.faults.load_driver` in a subprocess against one CA."""

    def __init__(self, ca: RunningCa, workdir: Path, *, threads: int = 4) -> None:
        token_file = workdir / f"{ca.data_dir.name}-token"
        token_file.write_text(ca.mint_token("load", "driver", ttl_s=3600))
        token_file.chmod(0o600)
        self.out = workdir / f"{ca.data_dir.name}-answers.txt"
        self.out.touch()
        argv = [ca.grpc_addr, str(ca.root_cert_path), str(token_file), str(self.out), str(threads)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.load_driver", *argv], cwd=REPO
        )

    def answers(self) -> list[Answer]:
        found = []
        for line in self.out.read_text().split("\n")[:-1]:  # complete lines only
            at, code, *rest = line.split()
            found.append(Answer(float(at), code, rest[0] if rest else None))
        return found

    def received(self) -> list[str]:
        return [a.serial for a in self.answers() if a.serial is not None]

    def wait_for_ok(self, count: int, *, after: float = 0.0, timeout: float = 60.0) -> float:
        """Wait until `count` certificates arrived after `after`; the time of the first."""
        deadline = time.monotonic() + timeout
        while True:
            oks = [a.at for a in self.answers() if a.code == "OK" and a.at >= after]
            if len(oks) >= count:
                return oks[0]
            assert self.process.poll() is None, "load driver died"
            assert time.monotonic() < deadline, f"only {len(oks)} of {count} issued"
            time.sleep(0.02)

    def wait_for_error(self, code: str, *, after: float, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(a.code == code and a.at >= after for a in self.answers()):
            assert time.monotonic() < deadline, f"no {code} seen: {self.codes(after)}"
            time.sleep(0.02)

    def codes(self, after: float = 0.0, before: float = float("inf")) -> dict[str, int]:
        return dict(Counter(a.code for a in self.answers() if after <= a.at < before))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only; mount failure is a test failure, never a skip)."""
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
