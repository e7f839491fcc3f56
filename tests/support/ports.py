"""A free loopback TCP port for a peer that must be told its port before it starts (PostgreSQL,
kube-apiserver, pilot-agent, a federated CA). Our own servers bind port 0 and report theirs."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just gave out and took back; free until someone else takes it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
