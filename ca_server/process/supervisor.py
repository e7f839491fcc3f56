"""The CA supervisor process (`bulwark ca serve`): owns the data dir and ports, prepares
the CA material, runs the worker pool and the admin app.

supervisor (this process, asyncio)      workers (`pool`, spawned, one per core)
  - data-dir lock, port probe             - grpc.aio server, one event loop
  - root-cert.pem                         - authenticate, sign, record (`ca_server.assembly`)
  - serving certificate                   - metrics into PROMETHEUS_MULTIPROC_DIR
  - admin app (uvicorn)
  - CA material (`process.material`): prepared at start, re-read, handed to the pool
Start-up failures raise; `bulwark ca serve` (certs.cli.exits) turns them into one line
on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import uvicorn

from ca_server.admin.app import create_admin_app
from ca_server.authn.local_issuer import (
    ISSUER_DIR,
    JWKS_FILE,
    KEY_FILE,
    LocalIssuer,
    TokenPolicy,
    write_token_policy,
)
from ca_server.authority.clock import ClockWatch
from ca_server.authority.custody import HsmCustody, KeyCustody, key_location
from ca_server.authority.material import (
    CaMaterial,
)
from ca_server.authority.refresh import MaterialManager, ReloadHealth, describe_failure
from ca_server.config import CaConfig, parse_hostport
from ca_server.datadir import DataDirLock, lock_data_dir, prepare_data_dir, private_dir
from ca_server.descriptors import limit as descriptor_limit
from ca_server.descriptors import raise_limit
from ca_server.errors import ConfigError
from ca_server.hsm.readiness import HsmReadiness
from ca_server.kube.status import NO_CLUSTERS, ClusterViews
from ca_server.process.custody import close_custody, open_custody
from ca_server.process.material import (
    CaPool,
    keep_material_current,
    material_manager,
    prepare_material,
    worker_keys,
)
from ca_server.process.pool import WorkerPool
from ca_server.process.ports import bind_socket, probe_free, reserve_port
from ca_server.process.preflight import check_files
from ca_server.process.readiness import IssuerKeysCheck, Readiness
from ca_server.process.slots import build_rotator
from ca_server.process.worker import WorkerSpec, run_worker
from ca_server.record.ledger import default_record_url, parse_record_url
from ca_server.record.ledger.health import RecordProbe
from ca_server.record.ledger.integrity import guard_record_of
from ca_server.record.lock import lock_sqlite_record
from ca_server.spiffe.services import SpiffeServices, shared_key_set
from certs.errors import CertsError
from certs.files import write_atomic

if TYPE_CHECKING:
    from ca_server.admin.rotation_routes import Leadership

log = logging.getLogger("ca_server")
CHECK_INTERVAL_S = 5.0  # readiness checks run this often even unprobed, so changes are logged


def serve(config: CaConfig, *, log_level: int = logging.INFO, log_format: str = "text") -> int:
    """Run the CA until SIGTERM/SIGINT; returns 0. A start-up failure raises (ConfigError,
    RecordDamaged, OSError, ...) for the command to report."""
    metrics_dir = tempfile.mkdtemp(prefix="bulwark-ca-metrics-")
    # Worker-process plumbing, not configuration: prometheus_client's multiprocess mode reads
    # this variable in every process, and spawned workers inherit it from this one.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return asyncio.run(_serve(config, metrics_dir, log_level, log_format))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _claim_data_dir_and_ports(config: CaConfig) -> DataDirLock:
    """Own the data dir (0700, StrictModes, exclusive lock) and check every port is free.

    The port probe runs before the CA creates its own SO_REUSEPORT group, which would
    otherwise silently join another process's listeners.
    """
    prepare_data_dir(config.data_dir)
    lock = lock_data_dir(config.data_dir)
    try:
        for flag, addr in (
            ("--grpc-addr", config.grpc_addr),
            ("--mtls-grpc-addr", config.mtls_grpc_addr),
            ("--admin-addr", config.admin_addr),
        ):
            if addr is not None:
                host, port = parse_hostport(addr, what=flag)
                probe_free(host, port, what=flag)
    except BaseException:
        lock.release()
        raise
    return lock


def _worker_spec(
    config: CaConfig,
    binds: dict[str, tuple[str, int]],
    log_level: int,
    log_format: str,
) -> WorkerSpec:
    mtls = binds.get("mtls_grpc_addr")
    return WorkerSpec(
        config=config,
        host=binds["grpc_addr"][0],
        port=binds["grpc_addr"][1],
        mtls_host=mtls[0] if mtls else None,
        mtls_port=mtls[1] if mtls else None,
        log_level=log_level,
        log_format=log_format,
    )


def _reserve_grpc_ports(
    config: CaConfig, reserved: list[socket.socket]
) -> dict[str, tuple[str, int]]:
    """Reserve the gRPC ports (appending to `reserved`); name -> (host, bound port)."""
    binds: dict[str, tuple[str, int]] = {}
    for name, flag, addr in (
        ("grpc_addr", "--grpc-addr", config.grpc_addr),
        ("mtls_grpc_addr", "--mtls-grpc-addr", config.mtls_grpc_addr),
    ):
        if addr is None:
            continue
        host, port = parse_hostport(addr, what=flag)
        reserved.append(reserve_port(host, port))
        binds[name] = (host, reserved[-1].getsockname()[1])
    return binds


def _announce_key(custody: KeyCustody, material: CaMaterial) -> None:
    if isinstance(custody, HsmCustody):
        where = key_location(material.signing_key)
        log.info(
            "CA key in the HSM: token %s, object %s (%s), module %s",
            where["token"],
            where["object"],
            where["key_type"],
            custody.token.module,
        )


def _announce_local_issuer(config: CaConfig) -> None:
    """Create (or check) the embedded issuer when the CA trusts it, and record in the data dir
    which tokens this CA accepts, for `bulwark token mint`'s warnings."""
    write_token_policy(
        config.data_dir,
        TokenPolicy(
            embedded_issuer=config.uses_local_issuer,
            max_token_lifetime_s=config.max_token_lifetime.total_seconds(),
            audiences=tuple(config.audiences),
        ),
    )
    if config.uses_local_issuer:
        issuer_dir = config.data_dir / ISSUER_DIR
        private_dir(issuer_dir, what="token issuer directory")
        try:
            issuer = LocalIssuer.load_or_create(config.data_dir)
        except (ValueError, CertsError) as exc:
            raise ConfigError(
                f"the embedded token issuer in {issuer_dir} is unusable ({describe_failure(exc)}); "
                f"remove {KEY_FILE} and {JWKS_FILE} there to make new ones"
            ) from None
        log.warning(
            "no authenticator configured: trusting the embedded token issuer (JWKS %s); "
            "mint tokens with `bulwark token mint --data-dir %s`",
            issuer.jwks_path,
            config.data_dir,
        )


async def _serve(config: CaConfig, metrics_dir: str, log_level: int, log_format: str) -> int:
    check_files(config)  # a file no wait can fix: exit 2 before anything starts
    raise_limit()  # before the workers start: they inherit it
    lock = _claim_data_dir_and_ports(config)
    try:
        record_lock = lock_sqlite_record(config)  # an SQLite record is never shared
        try:
            return await _serve_locked(config, metrics_dir, log_level, log_format)
        finally:
            if record_lock is not None:
                record_lock.release()
    finally:
        lock.release()


async def _serve_locked(config: CaConfig, metrics_dir: str, log_level: int, log_format: str) -> int:
    custody = open_custody(config)  # with --ca-key pkcs11:..., the supervisor's HSM session
    try:
        return await _serve_with_custody(config, custody, metrics_dir, log_level, log_format)
    finally:
        close_custody(custody)


async def _serve_with_custody(
    config: CaConfig, custody: KeyCustody, metrics_dir: str, log_level: int, log_format: str
) -> int:
    rotator = build_rotator(config, custody)
    material = prepare_material(config, datetime.now(UTC), rotator, custody)
    log.info("CA material: %s; root bundle at %s", material.source, config.root_cert_path)
    _announce_key(custody, material)
    _announce_local_issuer(config)
    from ca_server.admin import check_record

    anchor_keeper = guard_record_of(config)  # damaged/missing record: RecordDamaged (exit 2)
    check_record(config)  # a bad --record is a clear start-up error, before any worker starts
    controllers = None
    if config.kube is not None:
        from ca_server.kube.wiring import KubeControllers

        # Leader-only writers (root ConfigMaps, root renewal); every replica serves CSRs.
        controllers = KubeControllers(
            config.kube,
            root_pem=lambda: manager.current.root_bundle_pem,
            material=lambda: manager.current,  # istiod's serving certificate, when configured
        )
    manager = material_manager(
        config, material, controllers.is_leader if controllers else lambda: True, rotator, custody
    )
    # With replicas, one JWT key set for all (the Lease holder rotates it, with Kubernetes).
    shared = shared_key_set(config, owns=controllers.is_leader if controllers else lambda: True)
    spiffe = SpiffeServices(config, lambda: manager.current, custody=custody, shared=shared)
    spiffe.prepare()  # a JWT signing key and the initial federated bundles before any worker
    reserved: list[socket.socket] = []
    pool: CaPool | None = None
    # The key timeline runs while the workers start: another replica may switch keys meanwhile.
    spiffe_task = asyncio.create_task(spiffe.run())
    try:
        binds = _reserve_grpc_ports(config, reserved)
        pool = WorkerPool(
            target=run_worker,
            spec=_worker_spec(config, binds, log_level, log_format),
            keys=worker_keys(config, material),
            count=config.workers,
        )
        if controllers is not None:
            controllers.start()
        await pool.start()
        addrs = {name: f"{host}:{port}" for name, (host, port) in binds.items()}
        log.info(
            "gRPC IstioCertificateService on %s (%d worker(s), file descriptor limit %d each)",
            addrs["grpc_addr"],
            config.workers,
            descriptor_limit(),
        )
        if "mtls_grpc_addr" in addrs:
            log.info(
                "client-certificate renewal on %s (client certificate required)",
                addrs["mtls_grpc_addr"],
            )
        endpoint_addr = await spiffe.start()
        if endpoint_addr is not None:
            addrs["bundle_endpoint_addr"] = endpoint_addr
        views = controllers or NO_CLUSTERS
        leadership = controllers.elector if controllers is not None else None
        return await _serve_until_stopped(
            config, pool, manager, spiffe, metrics_dir, addrs, views, leadership
        )
    finally:
        spiffe_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spiffe_task
        anchor_keeper.stop()
        if controllers is not None:
            controllers.stop()
        if pool is not None:
            pool.stop()
        for sock in reserved:
            sock.close()


async def _serve_until_stopped(
    config: CaConfig,
    pool: CaPool,
    manager: MaterialManager,
    spiffe: SpiffeServices,
    metrics_dir: str,
    addrs: dict[str, str],
    clusters: ClusterViews,
    leadership: Leadership | None,
) -> int:
    """The admin API beside the supervisor's tasks (material refresher, the HSM and record
    probes, the readiness checks) until SIGTERM/SIGINT."""
    checks = Readiness(pool, ReloadHealth(time.time()))
    hsm = HsmReadiness(lambda: manager.current.signing_key)
    checks.add_part(lambda: (hsm.ready, hsm.detail()))
    record = RecordProbe(parse_record_url(config.record or default_record_url(config.data_dir)))
    checks.add_part(record.detail)
    clock = ClockWatch(log)
    checks.add(lambda: clock.check(manager.current, datetime.now(UTC)))
    wake = asyncio.Event()
    jobs = [
        keep_material_current(config, manager, pool, checks.health, wake),
        hsm.run(),
        record.run(),
        checks.watch(CHECK_INTERVAL_S),
    ]
    if config.jwt_issuer is not None and config.jwks_file is None:
        issuer_keys = IssuerKeysCheck(config.jwt_issuer)
        checks.add(issuer_keys)
        jobs.append(issuer_keys.run())
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        return await _run_admin(
            config, checks, metrics_dir, manager, addrs, wake, spiffe, clusters, leadership
        )
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _run_admin(
    config: CaConfig,
    checks: Readiness[CaPool],
    metrics_dir: str,
    manager: MaterialManager,
    addrs: dict[str, str],
    wake: asyncio.Event,
    spiffe: SpiffeServices,
    clusters: ClusterViews,
    leadership: Leadership | None,
) -> int:
    pool, health = checks.pool, checks.health
    admin_host, admin_port = parse_hostport(config.admin_addr, what="--admin-addr")
    from ca_server.admin import admin_router_for
    from ca_server.admin.wiring import rotation_router_for

    record_router, close_record = admin_router_for(
        config,
        lambda: manager.current,
        admin_host=admin_host,
        spiffe_bundle=spiffe.spiffe_bundle,
        federated_bundles=spiffe.federated,
        metrics_dir=metrics_dir,
        clusters=clusters.cluster_statuses,
    )
    loop = asyncio.get_running_loop()

    def changed() -> None:  # called from the route's thread
        loop.call_soon_threadsafe(wake.set)

    rotation_router = rotation_router_for(  # with Kubernetes, only the leader's verbs act
        config, manager.rotator, admin_host=admin_host, changed=changed, leadership=leadership
    )
    app = create_admin_app(
        metrics_dir=metrics_dir,
        material=lambda: manager.current,
        readiness=checks,
        routers=[record_router, rotation_router],
        extra_metrics=lambda: (
            health.exposition() + spiffe.exposition() + clusters.cluster_exposition()
        ),
    )
    sock = bind_socket(admin_host, admin_port, option=socket.SO_REUSEADDR, what="admin address")
    admin_addr = f"{admin_host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    watcher = asyncio.create_task(pool.watch())
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
