"""Node agent benchmark (issue 23): 100 pods of 20 service accounts on one node agent.

The node agent runs as it would on a VM (`--mode node --attestor unix`), against a real
Bulwark CA. The pods are `bench/node_clients.py` processes running as 20 uids (each uid maps
to one service account); each process holds 5 pods, each pod its own connection with an open
SDS stream (`default`, `ROOTCA`, ACKed) and a Workload API stream, so the agent serves 100
connections, 200 streams and 20 identities. With the k8s attestor the holders would be 100
pods, not 20 processes; the agent's work per connection and stream is the same.

- `node_agent_reboot_100pods_s`: the client processes are started (and have imported gRPC)
  first; the node agent is started; each client opens its pods the moment the socket appears.
  From the first client seeing the socket to the last pod served (certificate verified, first
  Workload API SVID received).
- `node_agent_rss_mb_100pods`: the node agent's resident memory with those 100 pods held.
- `node_agent_first_cert_ms_p50`: a new pod of a new service account on that warm agent (its
  key pool full, its CA channel open), from the pod's connect to its verified certificate;
  each sample a fresh process of a fresh uid, so each includes one CA round trip.
  `node_agent_first_cert_shared_ms_p50`: the same for a pod whose account is already served.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from tests.support.ca_process import REPO, RunningCa, tree_env
from tests.support.node_agent import (
    ISTIOD_SAN,
    NODE_ACCOUNT,
    NODE_NAMESPACE,
    setpriv,
    write_unix_identities,
)

ACCOUNTS_UID = 5000  # uid 5000 + i -> bench/sa-<i>
NEW_UID = 6000  # uid 6000 + i -> bench/new-<i>: a pod of an account not yet served
READY_TIMEOUT_S = 120.0


def bench_node(
    ca: RunningCa, logs: Path, *, pods: int = 100, accounts: int = 20, samples: int = 15
) -> dict[str, Any]:
    """The figures above; the node agent's log is copied into `logs`."""
    work = Path(tempfile.mkdtemp(prefix="bwn-", dir="/tmp"))  # short: a unix socket path
    work.chmod(0o755)  # the clients run as other users
    try:
        return _bench(ca, work, pods=pods, accounts=accounts, samples=samples)
    finally:
        logs.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(work / "node-agent.log", logs / "node-agent.log")
        shutil.rmtree(work, ignore_errors=True)


def _bench(ca: RunningCa, work: Path, *, pods: int, accounts: int, samples: int) -> dict[str, Any]:
    socket = work / "node" / "socket"
    entries = [({"uid": ACCOUNTS_UID + i}, f"bench/sa-{i:02d}") for i in range(accounts)]
    entries += [({"uid": NEW_UID + i}, f"bench/new-{i:02d}") for i in range(samples)]
    identities = write_unix_identities(work / "identities.yaml", entries)
    root = work / "root-cert.pem"  # where the clients (other users) may read it
    shutil.copyfile(ca.root_cert_path, root)
    per_process = pods // accounts
    clients = [
        _as_uid(ACCOUNTS_UID + i, "hold", socket, root, str(per_process)) for i in range(accounts)
    ]
    agent = None
    try:
        time.sleep(3.0)  # the clients import gRPC and wait for the socket
        agent = _start_agent(ca, work, identities, socket)
        served = [_first_line(c) for c in clients]
        seen = min(s["seen"] for s in served)
        last = max(max(s["served"] + s["workload_api"]) for s in served)
        time.sleep(2.0)
        rss_mb = procstat.rss_bytes(agent.pid) / 1e6
        status = _status(work)
        fresh = [_first_cert_ms(NEW_UID + i, socket, root) for i in range(samples)]
        shared = [_first_cert_ms(ACCOUNTS_UID + i % accounts, socket, root) for i in range(samples)]
        return {
            "pods": pods,
            "accounts": accounts,
            "connections": status["connections"],
            "identities": len(status["identities"]),
            "reboot_100pods_s": last - seen,
            "rss_mb_100pods": rss_mb,
            "first_cert_ms": fresh,
            "first_cert_ms_p50": statistics.median(fresh),
            "first_cert_shared_ms": shared,
            "first_cert_shared_ms_p50": statistics.median(shared),
            "attestor": "unix",
        }
    finally:
        for client in clients:
            client.kill()
            client.wait()
        if agent is not None:
            agent.terminate()
            agent.wait(15)


def _as_uid(uid: int, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [setpriv(), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         sys.executable, "-m", "bench.node_clients", args[0], *map(str, args[1:])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**tree_env(os.environ), "HOME": "/tmp"},
    )  # fmt: skip


def _start_agent(
    ca: RunningCa, work: Path, identities: Path, socket: Path
) -> subprocess.Popen[bytes]:
    token = work / "node-agent-token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(ca.mint_token(NODE_NAMESPACE, NODE_ACCOUNT))
    shutil.rmtree(socket.parent, ignore_errors=True)
    command = [
        sys.executable, "-m", "agent", "run", "--mode", "node", "--attestor", "unix",
        "--unix-identities", str(identities), "--socket", str(socket),
        "--ca-addr", ca.grpc_addr, "--mtls-ca-addr", ca.mtls_addr,
        "--ca-root-ca", str(ca.root_cert_path), "--istiod-san", ISTIOD_SAN,
        "--token-path", str(token), "--namespace", NODE_NAMESPACE, "--service-account", NODE_ACCOUNT,
        "--status-addr", "127.0.0.1:0", "--ready-file", str(work / "node-ready.json"),
        "--ecc-signature-algorithm", "ECDSA",
    ]  # fmt: skip
    log = open(work / "node-agent.log", "ab")  # noqa: SIM115 (owned by the process)
    return subprocess.Popen(command, cwd=work, env=tree_env(os.environ), stdout=log, stderr=log)


def _first_line(client: subprocess.Popen[str]) -> dict[str, Any]:
    assert client.stdout is not None
    line = client.stdout.readline()
    if not line:
        raise RuntimeError(
            f"a bench client ended without serving its pods:\n{client.stderr.read() if client.stderr else ''}"
        )
    result: dict[str, Any] = json.loads(line)
    return result


def _status(work: Path) -> dict[str, Any]:
    import urllib.request

    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = work / "node-ready.json"
    while not ready.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the node agent wrote no ready file")
        time.sleep(0.05)
    addr = json.loads(ready.read_text())["status_addr"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{addr}/debug/identities", timeout=10) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def _first_cert_ms(uid: int, socket: Path, root: Path) -> float:
    client = _as_uid(uid, "first", socket, root)
    out, err = client.communicate(timeout=120)
    if client.returncode != 0:
        raise RuntimeError(f"first-certificate client failed:\n{err}")
    return float(json.loads(out.strip().splitlines()[-1])["ms"])
