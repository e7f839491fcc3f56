"""A real node agent (`python -m agent run --mode node`) and callers running as other users.

`node_ca` starts a CA that lets the node agent's own account (`bulwark-system/node-agent`)
impersonate the workloads of the namespaces `demo` and `bench` (`--node-identity-policy`, as
on a VM); `start_node_agent` runs the node agent against it with the unix or k8s attestor;
`run_as` runs a command as another uid and gid (util-linux `setpriv`), which is how a test puts
real callers of different users on the node socket. `spiffe_fetch` (python -m
tests.support.spiffe_fetch) is the caller: the `spiffe` package's client, printing JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.support.ca_process import REPO, RunningCa, started_ca, tree_env
from tests.support.processes import read_log, stop_process

NODE_NAMESPACE = "bulwark-system"
NODE_ACCOUNT = "node-agent"
NODE_IDENTITY = f"{NODE_NAMESPACE}/{NODE_ACCOUNT}"
ISTIOD_SAN = "istiod.istio-system.svc"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


NODE_POLICY = {NODE_IDENTITY: ["demo/*", "bench/*"]}


def node_policy_args(directory: Path) -> tuple[str, ...]:
    """`--node-identity-policy FILE` (written into `directory`) granting `NODE_POLICY`."""
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / "node-identity-policy.yaml"
    policy.write_text(json.dumps(NODE_POLICY))  # JSON is YAML
    return ("--node-identity-policy", str(policy))


@contextmanager
def node_ca(data_dir: Path, *args: str) -> Iterator[RunningCa]:
    """A CA without Kubernetes on which the node agent's account may impersonate the
    workloads `NODE_POLICY` lists."""
    with started_ca(data_dir, *node_policy_args(data_dir.parent), *args) as ca:
        yield ca


class NodeAgentsCa(Protocol):
    """What a node agent needs of its CA: Bulwark's (`RunningCa`) or Istio's."""

    @property
    def grpc_addr(self) -> str: ...

    @property
    def mtls_addr(self) -> str: ...  # "" for a CA without a client-certificate port

    @property
    def root_cert_path(self) -> Path: ...

    def mint_token(self, namespace: str, service_account: str) -> str: ...


@dataclass
class NodeAgentProcess:
    process: subprocess.Popen[bytes]
    socket: Path
    status_addr: str
    log_path: Path

    @property
    def status_url(self) -> str:
        return f"http://{self.status_addr}"

    def get(self, path: str) -> Any:
        with _OPENER.open(self.status_url + path, timeout=5) as response:
            body = response.read()
        return json.loads(body) if path.startswith("/debug") else body.decode()

    def identities(self) -> dict[str, list[str]]:
        """SPIFFE ID -> holders, from the status page."""
        doc = self.get("/debug/identities")
        return {item["spiffe_id"]: item["holders"] for item in doc["identities"]}

    def wait_until(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise RuntimeError(f"node agent exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout}s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def memory_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        return stop_process(self.process, sig, timeout)

    def log(self) -> str:
        return read_log(self.log_path)


def write_unix_identities(path: Path, entries: Sequence[tuple[dict[str, Any], str]]) -> Path:
    """`--unix-identities` YAML from (match, identity) pairs (JSON is YAML)."""
    doc = {"identities": [{"match": match, "identity": identity} for match, identity in entries]}
    path.write_text(json.dumps(doc, indent=1))
    return path


def start_node_agent(
    ca: NodeAgentsCa,
    work: Path,
    *,
    attestor: str = "unix",
    unix_identities: Path | None = None,
    args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    token: str | None = None,
    namespace: str = NODE_NAMESPACE,
) -> NodeAgentProcess:
    """Spawn a node agent; returns once its socket is served and its status port answers.

    `work` is opened to other users (0755) so that callers of other uids reach the socket;
    the node agent's token in it stays 0600. `token`: the node agent's own token for the CA
    (default: one the CA's embedded issuer mints for bulwark-system/node-agent)."""
    work.chmod(0o755)
    token_path = work / "node-agent-token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token or ca.mint_token(namespace, NODE_ACCOUNT))
    ready = work / "node-ready.json"
    ready.unlink(missing_ok=True)
    socket = work / "node" / "socket"
    log_path = work / "node-agent.log"
    command = [
        sys.executable, "-m", "agent", "run", "--mode", "node", "--attestor", attestor,
        "--socket", str(socket), "--ca-addr", ca.grpc_addr, "--mtls-ca-addr", ca.mtls_addr,
        "--ca-root-ca", str(ca.root_cert_path), "--istiod-san", ISTIOD_SAN,
        "--token-path", str(token_path), "--namespace", namespace,
        "--service-account", NODE_ACCOUNT, "--status-addr", "127.0.0.1:0",
        "--ready-file", str(ready), "--ecc-signature-algorithm", "ECDSA",
    ]  # fmt: skip
    if unix_identities is not None:
        command += ["--unix-identities", str(unix_identities)]
    command += list(args)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=work,
            env={**tree_env(os.environ), **(extra_env or {})},
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"node agent did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    return NodeAgentProcess(process, socket, info["status_addr"], log_path)


def run_as(
    uid: int, gid: int, argv: Sequence[str], *, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `uid`:`gid` with no supplementary groups (util-linux `setpriv`)."""
    return subprocess.run(
        [setpriv(), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env={**tree_env(os.environ), "HOME": "/tmp"},
        check=False,
    )


def spawn_as(
    uid: int, gid: int, argv: Sequence[str], *, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """`run_as`, but left running (stdout a pipe, one line per event)."""
    return subprocess.Popen(
        [setpriv(), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd or REPO,
        env={**tree_env(os.environ), "HOME": "/tmp"},
    )


def setpriv() -> str:
    path = shutil.which("setpriv")
    if path is None:
        raise RuntimeError("util-linux setpriv is required to run callers as other users")
    return path


def fetch_command(socket: Path, *what: str) -> list[str]:
    """`python -m tests.support.spiffe_fetch SOCKET WHAT...`: the `spiffe` client's answers."""
    return [sys.executable, "-m", "tests.support.spiffe_fetch", str(socket), *what]


def fetch_as(uid: int, gid: int, socket: Path, *what: str) -> dict[str, Any]:
    """Run the `spiffe` client as `uid`:`gid`; its JSON answer (`error`/`code` on refusal)."""
    done = run_as(uid, gid, fetch_command(socket, *what))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
