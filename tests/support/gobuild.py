"""Peers built from the Go module registry: one way to find (or build) a cached binary set.

Each build script (`tests/k8s/build-peers.sh`, `tests/interop/build-istio.sh`, ...) builds
into a cache outside the repo and prints the binary directory on its last line; a warm run
only prints it. An environment variable naming a ready directory skips the script.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


class PeerBuildError(RuntimeError):
    """A peer could not be built or a binary is missing; the message carries the build's tail."""


def built_binaries(script: Path, names: Sequence[str], *, env_var: str) -> Path:
    """The directory holding every binary in `names`: `$env_var` if set, else `script`'s output."""
    given = os.environ.get(env_var)
    if given:
        path = Path(given)
    else:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PeerBuildError(
                f"{script.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        path = Path(proc.stdout.strip().splitlines()[-1])
    for name in names:
        if not os.access(path / name, os.X_OK):
            raise PeerBuildError(f"{path / name} is missing or not executable: run {script}")
    return path
