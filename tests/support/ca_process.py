"""Start and stop a real `python -m ca_server` process on loopback ports for tests."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.processes import read_log, stop_process

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
PORT_RETRY_S = 10.0


def tree_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH.

    A child started outside REPO (an agent in its work directory, a `bulwark` script) would
    otherwise import the tree the editable install points at, not this one (another worktree).
    """
    path = [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


@dataclass
class RunningCa:
    """A CA process; `restart()` brings it back on the same ports and data dir."""

    data_dir: Path
    args: tuple[str, ...]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    grpc_addr: str = ""
    mtls_addr: str = ""
    admin_addr: str = ""
    nofile: int | None = None  # RLIMIT_NOFILE (soft and hard) of the process, as `ulimit -n`
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-ca.log"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_addr}"

    @property
    def root_cert_path(self) -> Path:
        return self.data_dir / "root-cert.pem"

    @property
    def grpc_port(self) -> int:
        return int(self.grpc_addr.rsplit(":", 1)[1])

    def start(
        self,
        grpc_addr: str = "127.0.0.1:0",
        admin_addr: str = "127.0.0.1:0",
        mtls_addr: str = "127.0.0.1:0",
    ) -> RunningCa:
        ready = self.data_dir.parent / f"{self.data_dir.name}-ready.json"
        ready.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "ca_server",
            "--data-dir",
            str(self.data_dir),
            "--grpc-addr",
            grpc_addr,
            "--admin-addr",
            admin_addr,
            "--mtls-grpc-addr",
            mtls_addr,
            "--ready-file",
            str(ready),
            *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the process)
        self.process = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
            preexec_fn=None if self.nofile is None else _limit_files(self.nofile),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"CA exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"CA did not become ready in {START_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.grpc_addr, self.admin_addr = info["grpc_addr"], info["admin_addr"]
        self.mtls_addr = info.get("mtls_grpc_addr", "")
        return self

    def restart(self) -> RunningCa:
        """Stop, then start on the same ports. The kernel first picked them from the ephemeral
        range, which outgoing connections of other tests draw from too: while the CA is down
        one of them may hold a port for a moment, so a start refused because a port is in use
        is tried again for up to `PORT_RETRY_S`."""
        self.stop()
        deadline = time.monotonic() + PORT_RETRY_S
        while True:
            seen = len(self.log())
            try:
                return self.start(self.grpc_addr, self.admin_addr, self.mtls_addr or "127.0.0.1:0")
            except RuntimeError:
                if "already in use" not in self.log()[seen:] or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        return stop_process(self.process, sig, timeout)

    def log(self) -> str:
        return read_log(self.log_path)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """/readyz's status code and body."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.admin_url + "/readyz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 (the ready file only says the CA serves)."""
        deadline = time.monotonic() + timeout
        while (answer := self.readyz())[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"CA not ready in {timeout}s: {answer[1]}")
            time.sleep(0.05)

    def sign_leaf(self, spiffe_id: str, public_key: Any, *, now: datetime, ttl: timedelta) -> Any:
        """A leaf for `spiffe_id` signed with this CA's own self-signed root key, bypassing the
        CA (for client certificates a test needs before, or instead of, asking it)."""
        from certs.keys import load_private_key
        from certs.pem import load_certificates
        from certs.profile import leaf_certificate
        from certs.spiffe_id import SpiffeId

        return leaf_certificate(
            spiffe_id=SpiffeId.parse(spiffe_id),
            public_key=public_key,
            issuer_cert=load_certificates(self.root_cert_path.read_bytes())[0],
            issuer_key=load_private_key((self.data_dir / "ca" / "ca-key.pem").read_bytes()),
            now=now,
            ttl=ttl,
        )

    def mint_token(
        self, namespace: str, service_account: str, *, audience: str = "istio-ca", ttl_s: int = 3600
    ) -> str:
        from ca_server.authn.local_issuer import LocalIssuer

        issuer = LocalIssuer.load_or_create(self.data_dir)
        return issuer.mint(
            namespace=namespace,
            service_account=service_account,
            audience=audience,
            ttl=timedelta(seconds=ttl_s),
        )


def _limit_files(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: `ulimit -n LIMIT`
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def start_ca(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    workers: int = 1,
    nofile: int | None = None,
) -> RunningCa:
    """Start a CA with `args` (extra flags) and wait until it serves; `nofile` limits its
    file descriptors (soft and hard) as `ulimit -n` would."""
    extra = ("--workers", str(workers), *args) if "--workers" not in args else args
    return RunningCa(data_dir=data_dir, args=tuple(extra), env=env or {}, nofile=nofile).start()


@contextmanager
def started_ca(data_dir: Path, *args: str, workers: int = 1) -> Iterator[RunningCa]:
    """A CA started with `args` for the duration of a `with` block (fixtures use this)."""
    ca = start_ca(data_dir, *args, workers=workers)
    try:
        yield ca
    finally:
        ca.stop()


def serve_once(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m ca_server` on loopback ports with `args`, for CAs expected to refuse to start."""
    cmd = [
        sys.executable, "-m", "ca_server", "--data-dir", str(data_dir),
        "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--mtls-grpc-addr", "",
        "--workers", "1", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
