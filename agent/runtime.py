"""Wiring: one agent = cache + renewal + file watches + one gRPC server on the socket + status.

`Agent.run` supervises every task in one `asyncio.TaskGroup` and shuts down
in order: subscriptions end (streams finish with OK), the gRPC server stops,
the socket file is removed (only if it is still ours). A socket removed while
running is recreated; SIGHUP re-reads the watched files, the root and the
token, and retries a failed renewal at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from agent.config import AgentConfig, split_host_port
from agent.endpoints.socket_owner import SocketOwner
from agent.errors import AgentError, ConfigError
from agent.files.secrets import FileSecrets, OutputWriter
from agent.files.watch import FileWatcher
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache
from agent.state.renewal import Clock, RenewalPolicy, Renewer, SystemClock
from agent.state.svid import Svid, svid_from_response
from agent.upstream.caclient import SYSTEM_ROOTS, CaClient
from certs.csr import build_csr
from certs.errors import CertsError
from certs.keys import generate_key
from certs.spiffe_id import TrustDomain

if TYPE_CHECKING:
    from agent.endpoints.sds import SdsService
    from agent.endpoints.status import StatusServer
    from agent.endpoints.workload_api import WorkloadApiService
    from agent.node.runtime import NodeAgent
    from agent.state.identity import IdentityState
    from agent.state.jwt_cache import JwtSvidCache
    from agent.upstream.bundle_poller import BundlePoller
    from agent.upstream.identity_client import IdentityClient

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
        self.watcher = FileWatcher(
            interval=config.file_poll_interval, max_bytes=config.file_resource_max_bytes
        )
        self.files = FileSecrets(
            cache=self.cache, watcher=self.watcher, metrics=self.metrics, now=self.clock.now
        )
        self.ca = CaClient(config, metrics=self.metrics, now=self.clock.now, rng=self.rng)
        self.renewer = Renewer(
            issue=self.issue,
            cache=self.cache,
            clock=self.clock,
            rng=self.rng,
            policy=RenewalPolicy(grace_ratio=config.grace_ratio, grace_jitter=config.grace_jitter),
            metrics=self.metrics,
        )
        self.metrics.add_collector(self._collect_gauges)
        self.status_addr: tuple[str, int] | None = None
        self.owner = SocketOwner(
            config.socket_path, mode=config.socket_mode, group=config.socket_group
        )
        self._servers: list[grpc.aio.Server] = []

    # The serving side is built on first use: a process that never serves (`issue` alone)
    # never loads it, and an agent without a status port never loads the status module.
    @cached_property
    def identity_state(self) -> IdentityState:
        """The one identity this agent serves: every SDS and Workload API call is answered
        from it."""
        from agent.state.identity import IdentityState

        return IdentityState(
            spiffe_id=self.config.spiffe_id, cache=self.cache, jwt_svids=self.jwt_svids
        )

    @cached_property
    def sds(self) -> SdsService:
        from agent.endpoints.sds import SdsService
        from agent.state.identity import single

        return SdsService(
            states=single(self.identity_state), files=self.files, metrics=self.metrics
        )

    @cached_property
    def identity(self) -> IdentityClient:
        """JWT-SVIDs and trust bundles: the CA's WorkloadIdentityService, over the CSR's
        connection."""
        from agent.upstream.identity_client import IdentityClient

        config = self.config
        return IdentityClient(
            self.ca,
            expected=config.spiffe_id,
            timeout=config.ca_request_timeout,
            metrics=self.metrics,
            ca_addr=config.ca_addr,
        )

    @cached_property
    def jwt_svids(self) -> JwtSvidCache:
        from agent.state.jwt_cache import JwtSvidCache

        return JwtSvidCache(self.identity.mint_jwt)

    @cached_property
    def bundle_poller(self) -> BundlePoller:
        from agent.upstream.bundle_poller import BundlePoller

        return BundlePoller(
            self.identity,
            self.cache,
            trust_domain=TrustDomain(self.config.trust_domain),
            max_interval=self.config.trust_bundle_refresh,
            metrics=self.metrics,
        )

    @cached_property
    def workload_api(self) -> WorkloadApiService:
        from agent.endpoints.workload_api import WorkloadApiService
        from agent.state.identity import single

        return WorkloadApiService(states=single(self.identity_state), metrics=self.metrics)

    @cached_property
    def status(self) -> StatusServer:
        from agent.endpoints.status import StatusServer

        return StatusServer(cache=self.cache, metrics=self.metrics, now=self.clock.now)

    def _collect_gauges(self, metrics: AgentMetrics) -> None:
        from agent.endpoints.status import collect_gauges  # scraped only through the status port

        collect_gauges(metrics, self.cache.snapshot, self.clock.now())

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
        await self._watch_files()
        self._check_socket_path()
        self.owner.claim()
        try:
            if not self.config.file_mounted_certs:
                self.ca.preconnect()  # the CA's TLS handshake overlaps the gRPC server's start
            await self._start_grpc()
            await self._start_status()
            self._write_ready_file()
            await self._serve(stop, started)
        finally:
            self.cache.close()
            await self.ca.close()
            await asyncio.gather(*(s.stop(None) for s in self._servers))
            if "status" in self.__dict__:  # built only when enabled or looked at
                await self.status.close()
            self.owner.release()
            log.info("agent stopped")

    async def _serve(self, stop: asyncio.Event, started: float) -> None:
        """Every background task in one group until `stop`; streams end with OK."""
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(self.watcher.run(), name="file-watcher"),
                tasks.create_task(self._log_first_certificate(started)),
                tasks.create_task(self._keep_socket(), name="socket-keeper"),
            ]
            if not self.config.file_mounted_certs:
                workers.append(tasks.create_task(self.renewer.run(), name="renewal"))
                workers.append(tasks.create_task(self.bundle_poller.run(), name="trust-bundles"))
                workers.append(tasks.create_task(self.renewer.follow_roots(), name="root-follower"))
            if self.config.output_certs_dir is not None:
                writer = OutputWriter(self.config.output_certs_dir)
                workers.append(tasks.create_task(writer.run(self.cache), name="output-certs"))
            await stop.wait()
            log.info("shutting down: closing %d subscription(s)", self.cache.subscriber_count)
            self.cache.close()
            await asyncio.gather(*(s.stop(SHUTDOWN_GRACE_S) for s in self._servers))
            for worker in workers:
                worker.cancel()

    async def _start_status(self) -> None:
        if self.config.status_addr:
            self.status_addr = await start_status(self.status, self.config.status_addr)

    async def reload(self) -> None:
        """SIGHUP: re-read every watched file now; retry a failed renewal with the new files."""
        log.info("SIGHUP: re-reading watched files, the CA root and the token")
        await self.watcher.poll(force=True)
        self.ca.forget_refusals()
        self.bundle_poller.poll_now()
        if self.renewer.failures and not self.config.file_mounted_certs:
            self.renewer.retry_now()

    async def _watch_files(self) -> None:
        config = self.config
        if config.file_mounted_certs:
            await self.files.watch_mounted_certs(config.file_mounted_dir)
            return
        root = config.ca_root_candidates()[0]
        if str(root) != SYSTEM_ROOTS:
            await self.files.watch_root_file(root)

    def _check_socket_path(self) -> None:
        check_socket_path(self.owner.path)

    async def _start_grpc(self) -> None:
        """A gRPC server on the socket; earlier servers keep their open streams."""
        from agent.endpoints.sds import add_sds_to_server
        from agent.endpoints.workload_api import add_to_server

        server = grpc.aio.server()
        add_sds_to_server(self.sds, server)
        add_to_server(self.workload_api, server)
        with self.owner.binding() as target:
            if server.add_insecure_port(target) == 0:
                raise ConfigError(f"cannot listen on unix socket {self.owner.path}")
            await server.start()
        self._servers.append(server)
        self.owner.created()
        log.info("SDS and SPIFFE Workload API listening on unix:%s", self.owner.path)

    async def _keep_socket(self) -> None:
        """Recreate the socket (and its directory) if someone removes it while we run."""
        interval = self.config.file_poll_interval.total_seconds()
        last_error = ""
        while True:
            await asyncio.sleep(interval)
            if self.owner.present():
                continue
            if not last_error:
                log.warning("socket %s was removed; listening on it again", self.owner.path)
            try:
                self.owner.prepare_directory()
                await self._start_grpc()
                last_error = ""
            except (ConfigError, OSError) as exc:
                if str(exc) != last_error:  # once per distinct cause, not every poll
                    log.error("cannot recreate socket %s: %s", self.owner.path, exc)
                last_error = str(exc)

    def _write_ready_file(self) -> None:
        write_ready_file(self.config, self.status_addr)

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


async def start_status(status: StatusServer, addr: str) -> tuple[str, int]:
    """Listen on the status address, or `ConfigError` naming it."""
    host, port = split_host_port(addr, what="status address")
    try:
        return await status.start(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on status address {addr}: {exc.strerror}") from None


def check_socket_path(path: Path) -> None:
    absolute = str(path)
    if len(absolute) > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {absolute} is longer than {MAX_SOCKET_PATH} bytes")


def write_ready_file(config: AgentConfig, status_addr: tuple[str, int] | None) -> None:
    """`BULWARK_AGENT_READY_FILE`: socket, status address and pid, once serving."""
    if config.ready_file is None:
        return
    info = {
        "socket": os.path.abspath(config.socket_path),
        "status_addr": f"{status_addr[0]}:{status_addr[1]}" if status_addr else "",
        "pid": os.getpid(),
    }
    tmp = config.ready_file.with_name(config.ready_file.name + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(config.ready_file)


def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        agent: Agent | NodeAgent
        if config.mode == "node":
            from agent.node.runtime import NodeAgent

            agent = NodeAgent(config)
        else:
            agent = Agent(config)
        reloads: set[asyncio.Task[None]] = set()

        def on_hangup() -> None:
            task = loop.create_task(agent.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await agent.run(stop)

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
