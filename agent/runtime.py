"""Wiring: one agent = cache + rotation + file watches + one gRPC server on the socket + status.

`Agent.run` supervises every task in one `asyncio.TaskGroup` and shuts down
in order: subscriptions end (streams finish with OK), the gRPC server stops,
the socket file is removed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import stat
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import grpc
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.cache import SecretCache
from agent.caclient import SYSTEM_ROOTS, CaClient
from agent.config import AgentConfig, split_host_port
from agent.errors import AgentError, ConfigError
from agent.files import FileSecrets, OutputWriter
from agent.metrics import AgentMetrics
from agent.rotation import Clock, RotationPolicy, Rotator, SystemClock
from agent.sds import SdsService
from agent.status import StatusServer
from agent.svid import Svid, svid_from_response
from agent.watch import FileWatcher
from agent.workload_api import WorkloadApiService, add_to_server
from certs.csr import build_csr
from certs.errors import CertsError
from certs.keys import generate_key
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107
SHUTDOWN_GRACE_S = 2.0


class Agent:
    """One running agent. Build it, then `await run(stop)`."""

    def __init__(
        self, config: AgentConfig, *, clock: Clock | None = None, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.SystemRandom()
        self.metrics = AgentMetrics()
        self.cache = SecretCache()
        self.watcher = FileWatcher(interval=config.file_poll_interval)
        self.files = FileSecrets(
            cache=self.cache, watcher=self.watcher, metrics=self.metrics, now=self.clock.now
        )
        self.ca = CaClient(config, metrics=self.metrics, now=self.clock.now, rng=self.rng)
        self.rotator = Rotator(
            issue=self.issue,
            cache=self.cache,
            clock=self.clock,
            rng=self.rng,
            policy=RotationPolicy(grace_ratio=config.grace_ratio, grace_jitter=config.grace_jitter),
        )
        self.sds = SdsService(cache=self.cache, files=self.files, metrics=self.metrics)
        self.workload_api = WorkloadApiService(
            cache=self.cache, metrics=self.metrics, trust_domain=TrustDomain(config.trust_domain)
        )
        self.status = StatusServer(cache=self.cache, metrics=self.metrics, now=self.clock.now)
        self.metrics.add_collector(self._collect_expiry)
        self.status_addr: tuple[str, int] | None = None

    async def issue(self) -> Svid:
        """New key, CSR, CA call, checked answer: one SVID."""
        config = self.config
        kind = config.key_type()
        if kind.value.startswith("rsa-"):
            key = await asyncio.to_thread(generate_key, kind)  # 50 ms to seconds: off the loop
        else:
            key = generate_key(kind)  # EC: tens of microseconds, not worth a thread
        csr = build_csr(key, config.spiffe_id)
        chain = await self.ca.sign(csr, config.secret_ttl)
        return svid_from_response(
            chain_pems=chain, key=key, expected=config.spiffe_id, now=self.clock.now()
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down cleanly."""
        started = time.monotonic()
        self._watch_files()
        server = await self._start_grpc()
        try:
            if self.config.status_addr:
                host, port = split_host_port(self.config.status_addr, what="status address")
                try:
                    self.status_addr = await self.status.start(host, port)
                except OSError as exc:
                    raise ConfigError(
                        f"cannot listen on status address {self.config.status_addr}: {exc.strerror}"
                    ) from None
            self._write_ready_file()
            async with asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self.watcher.run(), name="file-watcher"),
                    tasks.create_task(self._log_first_certificate(started)),
                ]
                if not self.config.file_mounted_certs:
                    workers.append(tasks.create_task(self.rotator.run(), name="rotation"))
                if self.config.output_certs_dir is not None:
                    writer = OutputWriter(self.config.output_certs_dir)
                    workers.append(tasks.create_task(writer.run(self.cache), name="output-certs"))
                await stop.wait()
                log.info("shutting down: closing %d subscription(s)", self.cache.subscriber_count)
                self.cache.close()
                await server.stop(SHUTDOWN_GRACE_S)
                for worker in workers:
                    worker.cancel()
        finally:
            self.cache.close()
            await server.stop(None)
            await self.status.close()
            with suppress(FileNotFoundError):
                self.config.socket_path.unlink()
            log.info("agent stopped")

    def _watch_files(self) -> None:
        config = self.config
        if config.file_mounted_certs:
            self.files.watch_mounted_certs(config.file_mounted_dir)
            return
        root = config.ca_root_candidates()[0]
        if str(root) != SYSTEM_ROOTS:
            self.files.watch_root_file(root)

    async def _start_grpc(self) -> grpc.aio.Server:
        path = self.config.socket_path
        absolute = os.path.abspath(path)
        if len(absolute) > MAX_SOCKET_PATH:
            raise ConfigError(f"socket path {absolute} is longer than {MAX_SOCKET_PATH} bytes")
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self.sds, server)
        add_to_server(self.workload_api, server)
        if server.add_insecure_port(f"unix:{absolute}") == 0:
            raise ConfigError(f"cannot listen on unix socket {absolute}")
        await server.start()
        log.info("SDS and SPIFFE Workload API listening on unix:%s", absolute)
        return server

    def _write_ready_file(self) -> None:
        if self.config.ready_file is None:
            return
        info = {
            "socket": os.path.abspath(self.config.socket_path),
            "status_addr": f"{self.status_addr[0]}:{self.status_addr[1]}"
            if self.status_addr
            else "",
            "pid": os.getpid(),
        }
        tmp = self.config.ready_file.with_name(self.config.ready_file.name + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.config.ready_file)

    async def _log_first_certificate(self, started: float) -> None:
        box = self.cache.subscribe()
        try:
            while (snapshot := await box.get()) is not None:
                if snapshot.svid is not None:
                    log.info(
                        "first certificate %s after %.0f ms",
                        snapshot.svid.serial,
                        (time.monotonic() - started) * 1000,
                    )
                    return
        finally:
            self.cache.unsubscribe(box)

    def _collect_expiry(self, metrics: AgentMetrics) -> None:
        snapshot, now = self.cache.snapshot, self.clock.now()
        metrics.clear("cert_expiry_seconds")
        if snapshot.svid is not None:
            metrics.set(
                "cert_expiry_seconds", _left(snapshot.svid.not_after, now), resource_name="default"
            )
        roots = snapshot.roots
        if roots is not None and roots.certs:
            soonest = min(c.not_valid_after_utc for c in roots.certs)
            metrics.set("cert_expiry_seconds", _left(soonest, now), resource_name="ROOTCA")


def _left(when: datetime, now: datetime) -> float:
    return round((when - now).total_seconds(), 3)


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    log.info("removing stale socket %s", path)
    path.unlink()


def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(config).run(stop)

    code = 0
    try:
        asyncio.run(main())
    except* AgentError as group:
        for agent_error in group.exceptions:
            log.error("agent failed: %s", getattr(agent_error, "public_message", agent_error))
        code = 2
    except* CertsError as certs_errors:
        for certs_error in certs_errors.exceptions:
            log.error("agent failed: %s", certs_error)
        code = 2
    return code
