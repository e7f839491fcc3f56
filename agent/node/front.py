"""The node socket: accept, attest, relay; and the lookup that gives each call its caller's state.

Every connection is attested once, when it is accepted (`agent.node.relay` says why the
front accepts it itself), before a byte of it reaches gRPC. A refused caller is still relayed,
so that each of its calls ends with PERMISSION_DENIED naming what attestation found. Each
later call re-checks the caller cheaply (`Attestor.recheck`: the process still alive, still
in the same pod or running as the same user and program), and so does a sweep every
`SWEEP_INTERVAL_S` for open streams; a caller whose identity changed is refused and its
connection closed. A connection closes at once when its process exits (its pidfd turns
readable) or when its holder leaves (`close_holder`: a pod deleted or moved off the node).

Bounds (docs/NODE-AGENT.md): open connections in all, open connections per caller (a pod or
a process), calls in progress per caller. A connection over a bound is closed unanswered and
counted; a call over the bound gets RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.endpoints.socket_owner import SocketOwner
from agent.errors import AgentError
from agent.logs import LogBudget, printable
from agent.node.errors import CallerGone, NodeLimit, NotAttested
from agent.node.peer import PeerProcess
from agent.node.relay import Connection, new_peer_name

if TYPE_CHECKING:
    import grpc

    from agent.metrics import AgentMetrics
    from agent.node.attestation import Attestor
    from agent.node.registry import IdentityRegistry
    from agent.state.identity import IdentityState

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
BACKLOG = 1024
CLOSE_AFTER_REFUSAL_S = 0.5  # the refusal's status reaches the caller before its socket closes
ATTEST_GRACE_S = 5.0  # beyond the attestor's own wait, for a hung /proc read


class Limits(NamedTuple):
    connections: int
    caller_connections: int
    caller_calls: int
    attest_timeout: float


class NodeFront:
    """Owns the node socket and the private socket behind it; knows every open connection."""

    def __init__(
        self,
        *,
        owner: SocketOwner,
        attestor: Attestor,
        registry: IdentityRegistry,
        metrics: AgentMetrics,
        limits: Limits,
    ) -> None:
        self.owner = owner
        self._attestor = attestor
        self._registry = registry
        self._metrics = metrics
        self._limits = limits
        self._private = Path(tempfile.mkdtemp(prefix="bulwark-node-"))  # 0700
        self.inner_path = self._private / "grpc.sock"
        self._servers: list[asyncio.AbstractServer] = []
        self._open: set[Connection] = set()
        self._by_peer: dict[str, Connection] = {}
        self._by_caller: defaultdict[str, set[Connection]] = defaultdict(set)
        self._calls: defaultdict[str, int] = defaultdict(int)
        self._pending: set[asyncio.Task[None]] = set()
        self._budget = LogBudget()

    @property
    def connection_count(self) -> int:
        return len(self._open)

    def callers(self) -> dict[str, int]:
        """Open connections per caller, for the status page."""
        return {caller: len(conns) for caller, conns in self._by_caller.items()}

    async def listen(self) -> None:
        """Bind the node socket (mode and directory as configured) and start accepting."""
        loop = asyncio.get_running_loop()
        with self.owner.binding():
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(str(self.owner.path))
            except OSError:
                listener.close()
                raise
        listener.listen(BACKLOG)
        listener.setblocking(False)
        server = await loop.create_unix_server(self._accepted, sock=listener)
        self._servers.append(server)
        self.owner.created()
        log.info("node socket listening on unix:%s", self.owner.path)

    def _accepted(self) -> asyncio.Protocol:
        conn = Connection(on_open=self._start, on_close=self._closed)
        self._open.add(conn)
        return conn.front

    def _start(self, conn: Connection) -> None:
        """On accept: the global bound, the kernel's word on the peer, the per-process bound,
        all before the next accept; then attestation in its own task."""
        transport = conn.front.transport
        assert transport is not None
        if len(self._open) > self._limits.connections:
            self._refuse_connection(conn, "max_connections", "the node agent's connection bound")
            return
        transport.pause_reading()  # nothing reaches gRPC before attestation
        try:
            conn.peer = PeerProcess.of_socket(transport.get_extra_info("socket"))
        except AgentError as exc:
            conn.refusal, conn.caller = exc, "unattested"
        else:
            conn.caller = f"process:{conn.peer.key}"
        if not self._admit(conn, conn.caller):
            return
        task = asyncio.ensure_future(self._attach(conn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _admit(self, conn: Connection, caller: str) -> bool:
        """Count `conn` as one of `caller`'s; False (and closed) beyond the per-caller bound."""
        if conn.caller != caller:
            self._by_caller[conn.caller].discard(conn)
            if not self._by_caller[conn.caller]:
                del self._by_caller[conn.caller]
            conn.caller = caller
        group = self._by_caller[caller]
        group.add(conn)
        if len(group) > self._limits.caller_connections:
            self._refuse_connection(
                conn, "max_caller_connections", f"the bound of one caller ({caller})"
            )
            return False
        return True

    async def _attach(self, conn: Connection) -> None:
        if conn.peer is not None and conn.refusal is None:
            await self._attest(conn, conn.peer)
        if conn.closed:
            return
        if conn.attestation is not None and not self._admit(conn, conn.attestation.holder):
            return
        if conn.refusal is not None:
            self._log_refusal(conn)
        try:
            await self._connect_back(conn)
        except OSError as exc:
            log.error("cannot reach the node agent's own gRPC server: %s", exc)
            conn.close()
            return
        if conn.peer is not None and not conn.closed:
            asyncio.get_running_loop().add_reader(conn.peer.pidfd, self._process_exited, conn)
        if conn.front.transport is not None and not conn.closed:
            conn.front.transport.resume_reading()

    async def _attest(self, conn: Connection, peer: PeerProcess) -> None:
        try:
            async with asyncio.timeout(self._limits.attest_timeout + ATTEST_GRACE_S):
                attestation = await self._attestor.attest(peer)
        except TimeoutError:
            conn.refusal = NotAttested(f"attestation of pid {peer.pid} did not finish in time")
            return
        except AgentError as exc:
            conn.refusal = exc
            return
        if conn.closed:
            return
        conn.attestation = attestation
        try:
            conn.state = self._registry.acquire(attestation)
        except NodeLimit as exc:
            conn.refusal = exc

    async def _connect_back(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        conn.peer_name = new_peer_name()
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back.bind(b"\0" + conn.peer_name.encode())
            back.setblocking(False)
            await loop.sock_connect(back, str(self.inner_path))
        except OSError:
            back.close()
            raise
        self._by_peer[conn.grpc_peer] = conn
        await loop.create_unix_connection(lambda: conn.back, sock=back)

    def lookup(self, context: grpc.aio.ServicerContext[Any, Any]) -> IdentityState:
        """The caller's state for one call (`agent.state.identity.StateLookup`), or the
        refusal: PERMISSION_DENIED naming what attestation found, RESOURCE_EXHAUSTED."""
        conn = self._by_peer.get(context.peer())
        if conn is None or conn.closed:
            raise NotAttested("this connection did not come through the node socket")
        if conn.refusal is not None:
            raise conn.refusal
        assert conn.peer is not None and conn.attestation is not None and conn.state is not None
        try:
            self._attestor.recheck(conn.peer, conn.attestation)
        except AgentError as exc:
            self._refuse_later(conn, exc)
            raise
        if conn.state.cache.closed:
            raise CallerGone(f"{conn.attestation.holder_name} is no longer served on this node")
        caller = conn.caller
        if self._calls[caller] >= self._limits.caller_calls:
            self._metrics.inc("node_refusals_total", reason="max_caller_streams")
            raise NodeLimit(
                f"{conn.attestation.holder_name} already has {self._limits.caller_calls} calls in "
                "progress (--max-caller-streams)"
            )
        self._calls[caller] += 1
        context.add_done_callback(lambda _: self._call_done(caller))
        return conn.state

    def _call_done(self, caller: str) -> None:
        left = self._calls[caller] - 1
        if left > 0:
            self._calls[caller] = left
        else:
            self._calls.pop(caller, None)

    def close_holder(self, holder: str, why: str) -> None:
        """`holder` left the node: every connection it holds closes (its streams end)."""
        conns = list(self._by_caller.get(holder, ()))
        if conns:
            log.info("closing %d connection(s) of %s: %s", len(conns), holder, why)
        for conn in conns:
            conn.close()

    async def sweep(self) -> None:
        """Re-check every attested connection and the socket file, forever."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            for conn in list(self._open):
                if conn.attestation is None or conn.peer is None or conn.closed:
                    continue
                try:
                    self._attestor.recheck(conn.peer, conn.attestation)
                except CallerGone:
                    conn.close()  # the process or its pod is gone: nothing to report
                except AgentError as exc:
                    log.warning(
                        "closing a connection of %s: %s",
                        conn.attestation.holder_name,
                        exc.public_message,
                    )
                    conn.close()
            await self._keep_socket()

    async def _keep_socket(self) -> None:
        if self.owner.present():
            return
        log.warning("node socket %s was removed; listening on it again", self.owner.path)
        try:
            self.owner.prepare_directory()
            await self.listen()
        except (OSError, AgentError) as exc:
            log.error("cannot recreate node socket %s: %s", self.owner.path, exc)

    def _process_exited(self, conn: Connection) -> None:
        log.debug("pid %s exited: closing its connection", conn.peer.pid if conn.peer else "?")
        conn.close()

    def _closed(self, conn: Connection) -> None:
        self._open.discard(conn)
        self._by_peer.pop(conn.grpc_peer, None)
        conns = self._by_caller.get(conn.caller)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_caller[conn.caller]
                if self._attestor.holders_are_processes and conn.attestation is not None:
                    self._registry.release(conn.caller)

    def _refuse_connection(self, conn: Connection, reason: str, bound: str) -> None:
        self._metrics.inc("node_refusals_total", reason=reason)
        dropped = self._budget.take()
        if dropped is not None:
            more = f" ({dropped} similar lines dropped)" if dropped else ""
            who = f"pid {conn.peer.pid} (uid {conn.peer.uid})" if conn.peer else "a caller"
            log.warning("node socket: connection of %s closed unanswered: %s%s", who, bound, more)
        conn.close()

    def _refuse_later(self, conn: Connection, exc: AgentError) -> None:
        log.warning(
            "refusing %s: %s",
            conn.attestation.holder_name if conn.attestation else "?",
            exc.public_message,
        )
        asyncio.get_running_loop().call_later(CLOSE_AFTER_REFUSAL_S, conn.close)

    def _log_refusal(self, conn: Connection) -> None:
        self._metrics.inc("node_refusals_total", reason="not_attested")
        dropped = self._budget.take()
        if dropped is None:
            return
        message = getattr(conn.refusal, "public_message", str(conn.refusal))
        more = f" ({dropped} similar lines dropped)" if dropped else ""
        log.warning("node socket: caller refused: %s%s", printable(message, 512), more)

    async def close(self) -> None:
        """Stop accepting, end every connection, remove the socket and the private directory."""
        for server in self._servers:
            server.close()
        for task in list(self._pending):
            task.cancel()
        for conn in list(self._open):
            conn.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self.owner.release()
        shutil.rmtree(self._private, ignore_errors=True)
