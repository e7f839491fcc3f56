"""The CA supervisor: prepares CA material, starts the gRPC workers, serves the admin app.

supervisor (this process, asyncio)      workers (spawned, one per core)
  - CA material, root-cert.pem            - sync grpcio server, thread pool
  - serving certificate                   - authenticate, sign, record
  - admin app (uvicorn)                   - metrics into PROMETHEUS_MULTIPROC_DIR
  - restarts dead workers
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess

import uvicorn

from ca_server.admin import create_admin_app
from ca_server.config import CaConfig, parse_hostport
from ca_server.errors import ConfigError
from ca_server.material import (
    CaMaterial,
    DirectoryKeyStore,
    load_cacerts_dir,
    load_or_create,
    write_root_bundle,
)
from ca_server.token_issuer import LocalIssuer
from ca_server.worker import MaterialPems, WorkerSpec, run_worker
from certs.files import write_atomic
from certs.keys import KeyType, generate_key, private_key_pem
from certs.pem import to_pem
from certs.profile import leaf_certificate

log = logging.getLogger("ca_server")
SERVING_CERT_TTL = timedelta(days=365)
WORKER_START_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0


def prepare_material(config: CaConfig, now: datetime) -> CaMaterial:
    """Plugged-in CA files when given, else the self-signed root of the data dir (created once)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if config.cacerts_dir is not None:
        material = load_cacerts_dir(config.cacerts_dir, now)
    elif config.kube is not None:
        from ca_server.kube.wiring import load_or_create_material

        material = load_or_create_material(config.kube, config.trust_domain, now)
    else:
        material = load_or_create(
            DirectoryKeyStore(config.data_dir / "ca"), config.trust_domain, now
        )
    write_root_bundle(config.root_cert_path, material)
    return material


def serving_certificate(
    config: CaConfig, material: CaMaterial, now: datetime
) -> tuple[bytes, bytes]:
    """A TLS certificate for port 15012 issued by the CA itself: (chain PEM, key PEM)."""
    key = generate_key(KeyType.EC_P256)
    cert = leaf_certificate(
        spiffe_id=None,
        public_key=key.public_key(),
        issuer_cert=material.signing_cert,
        issuer_key=material.signing_key,
        now=now,
        ttl=SERVING_CERT_TTL,
        dns_names=config.server_dns_names,
    )
    chain = to_pem(cert) + "".join(to_pem(c) for c in material.chain)
    return chain.encode(), private_key_pem(key)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket so every worker can bind the same port."""
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the gRPC address {host}:{port}: {exc.strerror}") from exc
    return sock


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


@dataclass
class Supervisor:
    config: CaConfig
    spec_template: WorkerSpec
    workers: dict[int, BaseProcess] = field(default_factory=dict)
    ready_count: int = 0

    def start_worker(self, index: int) -> int:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        spec = replace(self.spec_template, index=index)
        process = ctx.Process(
            target=run_worker, args=(spec, child), name=f"bulwark-ca-worker-{index}"
        )
        process.start()
        child.close()
        if not parent.poll(WORKER_START_TIMEOUT_S):
            process.kill()
            raise ConfigError(
                f"CA worker {index} did not start within {WORKER_START_TIMEOUT_S:.0f}s; see its log"
            )
        try:
            port = int(parent.recv())
        except EOFError as exc:
            raise ConfigError(
                f"CA worker {index} exited during start-up; see the log above"
            ) from exc
        self.workers[index] = process
        return port

    def readiness(self) -> tuple[bool, str]:
        dead = [i for i, p in self.workers.items() if not p.is_alive()]
        if dead:
            return False, f"worker(s) {dead} not running"
        return True, f"{len(self.workers)} worker(s) serving"

    async def watch(self) -> None:
        """Restart workers that die (a crash in one must not take the CA down)."""
        while True:
            await asyncio.sleep(RESTART_BACKOFF_S)
            for index, process in list(self.workers.items()):
                if process.is_alive():
                    continue
                log.error(
                    "CA worker %d exited with code %s; restarting it", index, process.exitcode
                )
                with contextlib.suppress(Exception):
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                await asyncio.to_thread(self.start_worker, index)

    def stop(self) -> None:
        for process in self.workers.values():
            if process.is_alive():
                process.terminate()
        for process in self.workers.values():
            process.join(timeout=6)
            if process.is_alive():
                process.kill()


def serve(config: CaConfig, *, log_level: int = logging.INFO) -> int:
    """Run the CA until SIGTERM/SIGINT. Returns the process exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="bulwark-ca-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return asyncio.run(_serve(config, metrics_dir, log_level))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _serve(config: CaConfig, metrics_dir: str, log_level: int) -> int:
    now = datetime.now(UTC)
    material = prepare_material(config, now)
    log.info("CA material: %s; root bundle at %s", material.source, config.root_cert_path)
    if config.uses_local_issuer:
        issuer = LocalIssuer.load_or_create(config.data_dir)
        log.warning(
            "no authenticator configured: trusting the embedded token issuer (JWKS %s); "
            "mint tokens with `bulwark token mint --data-dir %s`",
            issuer.jwks_path,
            config.data_dir,
        )
    serving_chain, serving_key = serving_certificate(config, material, now)
    host, port = parse_hostport(config.grpc_addr, what="--grpc-addr")
    reserved = [reserve_port(host, port)]
    port = reserved[0].getsockname()[1]
    mtls_host: str | None = None
    mtls_port: int | None = None
    if config.mtls_grpc_addr is not None:
        mtls_host, wanted = parse_hostport(config.mtls_grpc_addr, what="--mtls-grpc-addr")
        reserved.append(reserve_port(mtls_host, wanted))
        mtls_port = reserved[1].getsockname()[1]
    supervisor = Supervisor(
        config=config,
        spec_template=WorkerSpec(
            config=config,
            material=MaterialPems.of(material),
            serving_chain_pem=serving_chain,
            serving_key_pem=serving_key,
            host=host,
            port=port,
            mtls_host=mtls_host,
            mtls_port=mtls_port,
            index=0,
            log_level=log_level,
        ),
    )
    controllers = None
    if config.kube is not None:
        from ca_server.kube.wiring import KubeControllers

        # Leader-only writers (root ConfigMaps); every replica serves CSRs.
        controllers = KubeControllers(config.kube, root_pem=lambda: material.root_bundle_pem)
    try:
        if controllers is not None:
            controllers.start()
        for index in range(config.workers):
            await asyncio.to_thread(supervisor.start_worker, index)
        log.info("gRPC IstioCertificateService on %s:%d (%d worker(s))", host, port, config.workers)
        addrs = {"grpc_addr": f"{host}:{port}"}
        if mtls_host is not None:
            addrs["mtls_grpc_addr"] = f"{mtls_host}:{mtls_port}"
            log.info(
                "client-certificate renewal on %s:%d (client certificate required)",
                mtls_host,
                mtls_port,
            )
        return await _run_admin(config, supervisor, metrics_dir, material, addrs)
    finally:
        if controllers is not None:
            controllers.stop()
        supervisor.stop()
        for sock in reserved:
            sock.close()


async def _run_admin(
    config: CaConfig,
    supervisor: Supervisor,
    metrics_dir: str,
    material: CaMaterial,
    addrs: dict[str, str],
) -> int:
    admin_host, admin_port = parse_hostport(config.admin_addr, what="--admin-addr")
    from ca_server.admin_api import admin_router_for

    record_router, close_record = admin_router_for(config, lambda: material, admin_host=admin_host)
    app = create_admin_app(
        metrics_dir=metrics_dir,
        material=lambda: material,
        readiness=supervisor.readiness,
        routers=[record_router],
    )
    family = socket.AF_INET6 if _is_ipv6(admin_host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((admin_host, admin_port))
    except OSError as exc:
        raise ConfigError(
            f"cannot bind the admin address {config.admin_addr}: {exc.strerror}"
        ) from exc
    admin_addr = f"{admin_host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    watcher = asyncio.create_task(supervisor.watch())
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    log.info("admin API on http://%s (metrics, healthz, readyz)", admin_addr)
    if config.ready_file is not None:
        ready = {**addrs, "admin_addr": admin_addr, "pid": os.getpid()}
        write_atomic(config.ready_file, json.dumps(ready).encode())
    await serving
    watcher.cancel()
    close_record()
    log.info("shutting down")
    return 0
