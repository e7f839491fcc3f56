"""Wiring of a node agent: attestor, front, registry, issuer, shared roots and bundles, status.

`NodeAgent.run` starts the attestor (the k8s attestor lists and watches the node's pods),
the gRPC servers on the private socket, then the node socket; it supervises every background
task in one `asyncio.TaskGroup` and shuts down in order: identities are freed (their streams
end with OK), the gRPC servers stop, the node socket is removed (only if still ours).
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from agent.config import AgentConfig
from agent.endpoints.sds import SdsService, add_sds_to_server
from agent.endpoints.socket_owner import SocketOwner
from agent.endpoints.workload_api import WorkloadApiService, add_to_server
from agent.files.secrets import FileSecrets
from agent.files.watch import FileWatcher
from agent.metrics import AgentMetrics
from agent.node.front import Limits, NodeFront
from agent.node.issuer import KeyPool, NodeIssuer
from agent.node.jwt import jwt_minter
from agent.node.own import OwnIdentity
from agent.node.registry import IdentityRegistry
from agent.node.resources import node_names
from agent.node.status import NodeStatusServer
from agent.runtime import SHUTDOWN_GRACE_S, check_socket_path, start_status, write_ready_file
from agent.state.cache import SecretCache
from agent.state.renewal import Clock, RenewalPolicy, SystemClock
from agent.upstream.bundle_poller import BundlePoller
from agent.upstream.caclient import SYSTEM_ROOTS, CaClient
from agent.upstream.identity_client import IdentityClient
from certs.spiffe_id import TrustDomain

if TYPE_CHECKING:
    from agent.node.attestation import Attestor

log = logging.getLogger(__name__)

FDS_PER_CONNECTION = 4  # the caller's socket, both ends of the relay, the pidfd
_SERIES = (
    ("node_identities", "gauge", "Identities a node agent serves now."),
    ("node_connections", "gauge", "Open connections to a node agent's socket."),
    ("node_refusals_total", "counter", "Connections and calls a node agent refused, by reason."),
    ("node_cert_expiry_seconds", "gauge", "Time left on each identity's certificate, in seconds."),
)


class NodeAgent:
    """One node agent. Build it, then `await run(stop)`."""

    def __init__(
        self, config: AgentConfig, *, clock: Clock | None = None, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.SystemRandom()
        self.metrics = AgentMetrics()
        for series in _SERIES:
            self.metrics.register(*series)
        self.shared = SecretCache()  # the root file's roots and the CA's trust bundles
        self.watcher = FileWatcher(
            interval=config.file_poll_interval, max_bytes=config.file_resource_max_bytes
        )
        self.files = FileSecrets(
            cache=self.shared, watcher=self.watcher, metrics=self.metrics, now=self.clock.now
        )
        self.ca = CaClient(config, metrics=self.metrics, now=self.clock.now, rng=self.rng)
        self.own = OwnIdentity(
            ca=self.ca, config=config, clock=self.clock, rng=self.rng, metrics=self.metrics
        )
        self.issuer = NodeIssuer(
            ca=self.ca,
            config=config,
            keys=KeyPool(config.key_type(), config.key_pool),
            now=self.clock.now,
            metrics=self.metrics,
            credential=self.own.credential,
            rng=self.rng,
        )
        self.registry = self._registry()
        self.bundle_poller = self._bundle_poller()
        self.attestor: Attestor = _attestor(config, self.on_holder_gone)
        self.front = self._front()
        self.status = NodeStatusServer(
            shared=self.shared,
            registry=self.registry,
            front=self.front,
            metrics=self.metrics,
            now=self.clock.now,
            not_ready=self._not_ready,
            attestor=config.attestor,
            own=self.own,
            ca_call=lambda: self.issuer.ca_call,
        )
        self.metrics.add_collector(self._collect_gauges)
        self.status_addr: tuple[str, int] | None = None
        self._server: grpc.aio.Server | None = None
        self._serving = False

    def _registry(self) -> IdentityRegistry:
        config = self.config
        return IdentityRegistry(
            issue=self.issuer.issue,
            mint_jwt=jwt_minter(
                self.ca,
                timeout=config.ca_request_timeout,
                metrics=self.metrics,
                mtls_addr=config.mtls_ca_addr,
            ),
            shared=self.shared,
            clock=self.clock,
            rng=self.rng,
            policy=RenewalPolicy(grace_ratio=config.grace_ratio, grace_jitter=config.grace_jitter),
            metrics=self.metrics,
            max_identities=config.max_identities,
        )

    def _bundle_poller(self) -> BundlePoller:
        """The CA's trust bundles, asked for as the node agent itself, into the shared cache."""
        config = self.config
        client = IdentityClient(
            self.ca,
            expected=config.spiffe_id,
            timeout=config.ca_request_timeout,
            metrics=self.metrics,
            ca_addr=config.ca_addr,
        )
        return BundlePoller(
            client,
            self.shared,
            trust_domain=TrustDomain(config.trust_domain),
            max_interval=config.trust_bundle_refresh,
            metrics=self.metrics,
        )

    def _front(self) -> NodeFront:
        config = self.config
        owner = SocketOwner(
            config.socket_path,
            mode=config.node_socket_mode,
            group=config.socket_group,
            dir_mode=config.node_socket_dir_mode,
        )
        limits = Limits(
            connections=config.max_connections,
            caller_connections=config.max_caller_connections,
            caller_calls=config.max_caller_streams,
            attest_timeout=config.attest_timeout.total_seconds(),
        )
        return NodeFront(
            owner=owner,
            attestor=self.attestor,
            registry=self.registry,
            metrics=self.metrics,
            limits=limits,
        )

    def on_holder_gone(self, holder: str, why: str) -> None:
        """A pod left the node (deleted, finished, moved): its connections close, and its
        identity is freed if it was the last holder."""
        self.front.close_holder(holder, why)
        self.registry.release(holder)

    def _not_ready(self) -> str:
        if not self._serving:
            return "the node socket is not served yet"
        return self.attestor.not_ready()

    def _collect_gauges(self, metrics: AgentMetrics) -> None:
        now = self.clock.now()
        metrics.set("node_identities", len(self.registry))
        metrics.set("node_connections", self.front.connection_count)
        metrics.clear("node_cert_expiry_seconds")
        for item in self.registry.describe(now):
            if item["seconds_left"] is not None:
                metrics.set(
                    "node_cert_expiry_seconds", item["seconds_left"], spiffe_id=item["spiffe_id"]
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down cleanly."""
        _raise_fd_limit(self.config.max_connections * FDS_PER_CONNECTION + 256)
        await self._watch_root_file()
        try:
            check_socket_path(self.front.owner.path)
            self.front.owner.claim()
            await self.attestor.start()
            await self._start_grpc()
            await self.front.listen()
            self._serving = True
            if self.config.status_addr:
                self.status_addr = await start_status(self.status, self.config.status_addr)
            write_ready_file(self.config, self.status_addr)
            await self._serve(stop)
        finally:
            self.registry.close()
            await self.front.close()
            if self._server is not None:
                await self._server.stop(None)
            await self.issuer.close()
            await self.ca.close()
            await self.status.close()
            await self.attestor.close()
            log.info("node agent stopped")

    async def _serve(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(self.watcher.run(), name="file-watcher"),
                tasks.create_task(self.bundle_poller.run(), name="trust-bundles"),
                tasks.create_task(self.registry.run(), name="identities"),
                tasks.create_task(self.front.sweep(), name="node-sweep"),
                tasks.create_task(self.own.run(), name="own-identity"),
            ]
            workers.append(tasks.create_task(self.attestor.run(), name="attestor"))
            self.issuer.warm()
            await stop.wait()
            log.info(
                "shutting down: %d identities, %d connections",
                len(self.registry),
                self.front.connection_count,
            )
            self.registry.close()
            self.own.cache.close()
            if self._server is not None:
                await self._server.stop(SHUTDOWN_GRACE_S)
            for worker in workers:
                worker.cancel()

    async def _start_grpc(self) -> None:
        """SDS and the Workload API on the private socket, behind the front."""
        server = grpc.aio.server(options=(("grpc.max_concurrent_streams", 100),))
        add_sds_to_server(
            SdsService(
                states=self.front.lookup,
                files=self.files,
                metrics=self.metrics,
                names=node_names,
                fetch_wait=self.config.ca_request_timeout.total_seconds(),
            ),
            server,
        )
        add_to_server(WorkloadApiService(states=self.front.lookup, metrics=self.metrics), server)
        if server.add_insecure_port(f"unix:{self.front.inner_path}") == 0:
            raise OSError(f"cannot listen on {self.front.inner_path}")
        await server.start()
        self._server = server

    async def _watch_root_file(self) -> None:
        root = self.config.ca_root_candidates()[0]
        if str(root) != SYSTEM_ROOTS:
            await self.files.watch_root_file(root)

    async def reload(self) -> None:
        """SIGHUP: re-read the watched files, the CA root and the token; retry failed renewals."""
        log.info("SIGHUP: re-reading watched files, the CA root and the token")
        await self.watcher.poll(force=True)
        self.ca.forget_refusals()
        self.bundle_poller.poll_now()
        self.registry.retry_failed()


def _attestor(config: AgentConfig, on_holder_gone: Callable[[str, str], None]) -> Attestor:
    trust_domain = TrustDomain(config.trust_domain)
    if config.attestor == "unix":
        from agent.node.unix_identities import UnixAttestor, load_unix_identities

        assert config.unix_identities is not None
        rules = load_unix_identities(config.unix_identities, trust_domain)
        return UnixAttestor(rules, source=str(config.unix_identities))
    from agent.node.k8s_attestor import K8sAttestor

    return K8sAttestor.from_config(config, on_holder_gone=on_holder_gone)


def _raise_fd_limit(wanted: int) -> None:
    """Each connection costs file descriptors: raise the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if hard != resource.RLIM_INFINITY and hard < wanted:
        log.warning(
            "the open-file limit (%d) is below what --max-connections needs (%d)", hard, wanted
        )
