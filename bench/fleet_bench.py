"""Drives `fleet.py` (rotation storm, thundering herd) against a fresh Bulwark CA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.ca_bench import BENCH, REPO, start_bulwark
from bench.workloads import make_workloads, save


def run_fleet(
    mode: str,
    work: Path,
    count: int,
    *,
    ca_args: tuple[str, ...] = (),
    duration_s: float,
    ttl_s: int = 60,
    channels: int = 200,
) -> dict[str, Any]:
    data_dir = work / f"{mode}-ca"
    workloads = make_workloads(data_dir, count, token_ttl_s=int(duration_s) + 3600)
    wl_file = work / f"{mode}-workloads.json"
    save(workloads, wl_file)
    del workloads
    ca = start_bulwark(data_dir, *ca_args)
    assert ca.process is not None
    try:
        cmd = [
            sys.executable,
            str(BENCH / "fleet.py"),
            mode,
            "--addr",
            ca.grpc_addr,
            "--root",
            str(ca.root_cert_path),
            "--workloads",
            str(wl_file),
            "--server-pid",
            str(ca.process.pid),
            "--duration-s",
            str(duration_s),
            "--ttl-s",
            str(ttl_s),
            "--channels",
            str(channels),
        ]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=duration_s + 300
        )
        result: dict[str, Any] = json.loads(out.stdout)
        result["ca_args"] = list(ca_args)
        return result
    finally:
        ca.stop()


if __name__ == "__main__":
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bulwark-fleet-"))
    mode, count, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    extra = tuple(sys.argv[4:])
    print(json.dumps(run_fleet(mode, work, count, duration_s=duration, ca_args=extra), indent=1))
