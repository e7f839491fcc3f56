"""One attested connection: the caller's socket relayed to the gRPC servers' private socket.

grpc.aio shows a servicer neither the connection's socket nor its peer credentials (for a
unix socket `context.peer()` is `unix:`; local credentials never ask `SO_PEERCRED`:
grpc/grpc#15511, #28755), and Python's grpc cannot be handed an accepted file descriptor as
C++'s `AddInsecureChannelFromFd` can. So the node agent accepts on the node socket itself,
attests the peer the kernel names, and relays the bytes to its gRPC servers over a second
connection whose client end it binds to a fresh abstract address (`bulwark-node-<128 random
bits>`): grpc reports that address as the call's peer (`unix-abstract:bulwark-node-...`),
which names the attested connection. The private socket is in a directory only the agent can
reach, and a call from any connection the front did not make finds no attested connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.errors import AgentError
    from agent.node.attestation import Attestation
    from agent.node.peer import PeerProcess
    from agent.state.identity import IdentityState

PEER_PREFIX = "bulwark-node-"


def new_peer_name() -> str:
    return PEER_PREFIX + os.urandom(16).hex()


class _Side(asyncio.Protocol):
    """One end of the relay: what it reads, the other end writes (with back-pressure)."""

    __slots__ = ("conn", "front", "other", "transport")

    def __init__(self, conn: Connection, *, front: bool) -> None:
        self.conn = conn
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.front:
            self.conn.on_open(self.conn)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)

    def eof_received(self) -> bool:
        other = self.other
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
            return True  # half-closed: the answer may still come back
        return False

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close()


class Connection:
    """A caller's connection: who the kernel says it is, what attestation made of it, and the
    two relayed sockets."""

    __slots__ = (
        "attestation",
        "back",
        "caller",
        "calls",
        "closed",
        "front",
        "on_close",
        "on_open",
        "peer",
        "peer_name",
        "refusal",
        "state",
    )

    def __init__(
        self, *, on_open: Callable[[Connection], None], on_close: Callable[[Connection], None]
    ) -> None:
        self.on_open = on_open  # the caller's socket is accepted
        self.on_close = on_close
        self.front = _Side(self, front=True)
        self.back = _Side(self, front=False)
        self.front.other, self.back.other = self.back, self.front
        self.peer: PeerProcess | None = None
        self.peer_name = ""
        self.caller = ""  # what the per-caller bounds count: the holder, or the process
        self.attestation: Attestation | None = None
        self.state: IdentityState | None = None
        self.refusal: AgentError | None = None
        self.calls = 0
        self.closed = False

    @property
    def grpc_peer(self) -> str:
        """What `context.peer()` says for calls on this connection."""
        return f"unix-abstract:{self.peer_name}"

    def close(self) -> None:
        """Close both sockets (the caller's calls end); idempotent."""
        if self.closed:
            return
        self.closed = True
        for side in (self.front, self.back):
            if side.transport is not None:
                side.transport.abort()
        if self.peer is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.peer.pidfd)
            self.peer.close()
        self.on_close(self)
