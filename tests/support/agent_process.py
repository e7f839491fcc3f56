"""Run `python -m agent` as a real process for tests that need one (signals, files, memory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.ca_process import RunningCa, tree_env
from tests.support.processes import read_log, stop_process

REPO = Path(__file__).resolve().parents[2]
ISTIOD_SAN = "istiod.istio-system.svc"


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    socket: Path
    status_url: str
    log_path: Path
    started_at: float  # time.monotonic() just before spawning

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from spawn until /healthz/ready said 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.status_url + "/healthz/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started_at
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"agent not ready in {timeout}s:\n{self.log()}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.status_url + path, timeout=5) as response:
            return str(response.read().decode())

    def memory_kb(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        return stop_process(self.process, sig, timeout)

    def log(self) -> str:
        return read_log(self.log_path)


def start_agent_process(
    ca: RunningCa,
    work: Path,
    *,
    namespace: str = "demo",
    service_account: str = "frontend",
    extra_env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> AgentProcess:
    """Spawn an agent for ns/sa against `ca`; returns once its socket and status port exist."""
    token = work / f"token-{service_account}"
    token.write_text(ca.mint_token(namespace, service_account))
    ready = work / f"ready-{service_account}.json"
    socket = work / f"{service_account}.sock"
    log_path = work / f"agent-{service_account}.log"
    env = {
        **tree_env(os.environ),
        "POD_NAMESPACE": namespace,
        "SERVICE_ACCOUNT": service_account,
        "CA_ADDR": ca.grpc_addr,
        "CA_ROOT_CA": str(ca.root_cert_path),
        "ISTIOD_SAN": ISTIOD_SAN,
        "BULWARK_TOKEN_PATH": str(token),
        "BULWARK_AGENT_STATUS_ADDR": "127.0.0.1:0",
        "BULWARK_AGENT_READY_FILE": str(ready),
        **(extra_env or {}),
    }
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--socket", str(socket), *args],
            cwd=work,
            env=env,
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"agent did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.01)
    info = json.loads(ready.read_text())
    return AgentProcess(process, socket, f"http://{info['status_addr']}", log_path, started)
