"""Run the real pilot-agent outside Kubernetes, in a directory laid out like a pod.

pilot-agent resolves its well-known paths relative to its working directory (the proxyv2
image runs it from /), so the pod root holds them: the projected token
./var/run/secrets/tokens/istio-token, the root ConfigMap mount
./var/run/secrets/istio/root-cert.pem, the bootstrap template
./var/lib/istio/envoy/envoy_bootstrap_tmpl.json; the SDS socket appears at
./var/run/secrets/workload-spiffe-uds/socket. Envoy is replaced by a stand-in script that
records its arguments and sleeps (pilot-agent only supervises it), unless a test gives a
real Envoy.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests.support.interop import InteropError, IstioBinaries, write_token
from tests.support.ports import free_port
from tests.support.processes import read_log

START_TIMEOUT_S = 60.0
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ENVOY_STAND_IN = """#!/bin/sh
# Stand-in for envoy: record how pilot-agent started us, then wait to be stopped.
printf '%s\\n' "$@" > envoy-args.txt
exec sleep 3600
"""


@dataclass
class PilotAgent:
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    status_port: int

    @property
    def output_certs(self) -> Path:
        return self.root / "out"

    @property
    def sds_socket(self) -> Path:
        return self.root / "var/run/secrets/workload-spiffe-uds/socket"

    @property
    def envoy_args(self) -> list[str]:
        path = self.root / "envoy-args.txt"
        return path.read_text().splitlines() if path.exists() else []

    def log(self) -> str:
        return read_log(self.log_path)

    def wait_for(self, *paths: Path, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every path exists and is non-empty (sockets: exist)."""
        deadline = time.monotonic() + timeout
        while True:
            if all(p.exists() and (p.is_socket() or p.stat().st_size > 0) for p in paths):
                return
            if self.process.poll() is not None:
                raise InteropError(f"pilot-agent exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise InteropError(
                    f"pilot-agent did not produce {paths} in {timeout}s:\n{self.log()}"
                )
            time.sleep(0.1)

    def wait_for_output_certs(self) -> None:
        self.wait_for(
            *(self.output_certs / n for n in ("cert-chain.pem", "key.pem", "root-cert.pem"))
        )

    def stop(self) -> int | None:
        """SIGTERM (pilot-agent drains and aborts envoy), then make sure the group is gone."""
        code = self.process.poll()
        if code is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the stand-in, if it outlived its parent
        return code


@dataclass(frozen=True)
class Workload:
    namespace: str
    service_account: str
    pod: str
    token: str


def start_pilot_agent(
    istio: IstioBinaries,
    root: Path,
    *,
    ca_addr: str,
    root_cert: Path,
    workload: Workload,
    envoy: bool = True,
    cluster_id: str = "Kubernetes",
    extra_env: dict[str, str] | None = None,
    envoy_binary: Path | None = None,
    admin_port: int | None = None,
) -> PilotAgent:
    """Start `pilot-agent proxy sidecar` in `root` against the CA at `ca_addr` (with the
    Envoy stand-in, or the real `envoy_binary` whose admin API listens on `admin_port`).

    CA_ADDR is given as localhost:PORT: Istio's dialer then uses the server name
    istiod.istio-system.svc (pilot/pkg/grpc/tls.go), the DNS SAN of Bulwark's serving cert.
    """
    host, port = ca_addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the CA must be on loopback, got {ca_addr}")
    ca = f"localhost:{port}"
    write_token(root / "var/run/secrets/tokens/istio-token", workload.token)
    (root / "var/run/secrets/istio").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root_cert, root / "var/run/secrets/istio/root-cert.pem")
    (root / "var/lib/istio/envoy").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        istio.directory / "envoy_bootstrap_tmpl.json",
        root / "var/lib/istio/envoy/envoy_bootstrap_tmpl.json",
    )
    (root / "etc/istio/proxy").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(exist_ok=True)  # pilot-agent does not create OUTPUT_CERTS itself
    stand_in = root / "envoy"
    stand_in.write_text(ENVOY_STAND_IN)
    stand_in.chmod(0o755)
    binary = envoy_binary or stand_in  # a real Envoy when given

    status_port = free_port()
    proxy_config = (
        f"{{discoveryAddress: '{ca}', statusPort: {status_port}, "
        f"proxyAdminPort: {admin_port or free_port()}, configPath: '{root}/etc/istio/proxy', "
        f"binaryPath: '{binary}', terminationDrainDuration: 1s, drainDuration: 1s}}"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "CA_ADDR": ca,
        "OUTPUT_CERTS": str(root / "out"),
        "POD_NAME": workload.pod,
        "POD_NAMESPACE": workload.namespace,
        "SERVICE_ACCOUNT": workload.service_account,
        "TRUST_DOMAIN": "cluster.local",
        "ISTIO_META_CLUSTER_ID": cluster_id,
        "INSTANCE_IP": "127.0.0.1",
        "PROXY_CONFIG": proxy_config,
        # Never probe cloud metadata servers: this machine talks to loopback only.
        "CLOUD_PLATFORM": "none",
    }
    if not envoy:
        env["DISABLE_ENVOY"] = "true"  # proxyless mode: the agent fetches certificates itself
    env.update(extra_env or {})
    log_path = root / "pilot-agent.log"
    log = open(log_path, "ab")  # noqa: SIM115 (owned by the process)
    process = subprocess.Popen(
        [str(istio.pilot_agent), "proxy", "sidecar"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    return PilotAgent(root=root, process=process, log_path=log_path, status_port=status_port)


def pod_root() -> Iterator[Path]:
    """A short directory (unix socket paths are limited to 107 bytes), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bwi-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sds_fetch(socket_path: Path, names: list[str], node_id: str) -> dict[str, secret_pb2.Secret]:
    """Ask pilot-agent's SDS server for `names` as Envoy does (StreamSecrets); one response."""
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()

    def stream() -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (item := requests.get()) is not None:
            yield item

    requests.put(
        discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id=node_id), resource_names=names, type_url=SECRET_TYPE
        )
    )
    secrets: dict[str, secret_pb2.Secret] = {}
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        responses = stub.StreamSecrets(stream(), timeout=30)
        try:
            while set(names) - set(secrets):
                response = next(responses)
                for resource in response.resources:
                    secret = secret_pb2.Secret()
                    resource.Unpack(secret)
                    secrets[secret.name] = secret
                requests.put(  # ACK, as Envoy does
                    discovery_pb2.DiscoveryRequest(
                        node=base_pb2.Node(id=node_id),
                        resource_names=names,
                        type_url=SECRET_TYPE,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                    )
                )
        finally:
            requests.put(None)
            responses.cancel()
    return secrets
