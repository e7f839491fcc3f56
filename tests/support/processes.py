"""Stopping a real process a test started, and reading its log: the same for the CA, the
agents, Envoy and pilot-agent."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int:
    """Send `sig` unless it has exited; its exit code. Killed (and the timeout raised) when it
    outlives `timeout`."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def read_log(path: Path) -> str:
    """A process's log so far ("" before it wrote one)."""
    return path.read_text(errors="replace") if path.exists() else ""
