"""What one unauthenticated peer can hold of a CA worker: every pod reaches port 15012.

grpc core bounds these for us, as server channel arguments (`server_options`): a connection
must finish its TLS handshake and send its first HTTP/2 SETTINGS within
`HANDSHAKE_TIMEOUT_MS`; a connection with no call in flight is closed after
`IDLE_TIMEOUT_MS` (the client reconnects when it next calls); every connection is told to
go after `MAX_AGE_MS`; and the worker accepts at most `connection_cap` connections, so that
the descriptors it needs itself (the record, key files, the API server) stay free: beyond
the cap a connection is closed at once and its client retries (UNAVAILABLE) instead of
waiting in the kernel's queue until its deadline.

grpc has no per-peer limit and gives no hook at accept time, so `PeerCap` enforces one just
after, as each TLS handshake starts: while this worker's connections fill more than half
of the cap, a peer (an IP address) holding more than `--max-connections-per-peer` of them
loses its newest ones (the socket is shut down; grpc then closes it). A client refilling
a flood as fast as it can still takes free slots between two checks, so others are
served, not unhindered. It reads /proc (Linux only; elsewhere the share is not enforced).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ca_server.descriptors import PROC_FDS, open_count

log = logging.getLogger("ca_server")

HANDSHAKE_TIMEOUT_MS = 10_000
IDLE_TIMEOUT_MS = 60_000
MAX_AGE_MS = 30 * 60_000  # then GOAWAY: long-lived clients spread again over the workers
AGE_GRACE_MS = 60_000  # for the calls in flight at that moment
RESERVED_DESCRIPTORS = 32  # kept for the worker itself, beyond the connections it holds
MIN_CONNECTIONS = 16
PRESSURE = 0.5  # the share of the cap from which a peer's share is enforced
CHECK_INTERVAL_S = 1.0
PRESSED_INTERVAL_S = 0.2  # while the connections near the cap: a flood refills it fast
MIN_SPACING_S = 0.02  # between two checks, however fast connections arrive
LOG_EVERY_S = 10.0
ESTABLISHED = "01"
TCP_TABLES = ("/proc/self/net/tcp", "/proc/self/net/tcp6")


def connection_cap(limit: int, open_now: int) -> int:
    """How many connections a worker holding `open_now` of `limit` descriptors accepts."""
    return max(MIN_CONNECTIONS, limit - open_now - RESERVED_DESCRIPTORS)


def server_options(cap: int) -> list[tuple[str, int]]:
    """A worker's grpc server arguments: SO_REUSEPORT and the bounds of the module doc."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", IDLE_TIMEOUT_MS),
        ("grpc.max_connection_age_ms", MAX_AGE_MS),
        ("grpc.max_connection_age_grace_ms", AGE_GRACE_MS),
        ("grpc.max_allowed_incoming_connections", cap),
    ]


@dataclass(frozen=True, slots=True)
class Connection:
    peer: str  # the client's IP address
    inode: int  # of its socket: larger is newer


def _address(hex_address: str) -> str:
    """/proc/net/tcp's `0100007F:1F90`-style address (host order per 32-bit word) as an IP."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def accepted(lines: Iterable[str], ports: frozenset[int]) -> list[Connection]:
    """The established connections to `ports` in the lines of /proc/net/tcp{,6}."""
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != ESTABLISHED or ":" not in fields[1]:
            continue
        if int(fields[1].rsplit(":", 1)[1], 16) in ports:
            found.append(Connection(peer=_address(fields[2]), inode=int(fields[9])))
    return found


def over_share(connections: list[Connection], per_peer: int) -> dict[str, list[Connection]]:
    """For each peer holding more than `per_peer`, its newest connections beyond that."""
    by_peer: dict[str, list[Connection]] = defaultdict(list)
    for connection in connections:
        by_peer[connection.peer].append(connection)
    return {
        peer: sorted(held, key=lambda c: c.inode)[per_peer:]
        for peer, held in by_peer.items()
        if len(held) > per_peer
    }


class PeerCap:
    """Shuts down a peer's connections beyond `per_peer` while the worker nears its `cap`.

    Runs on a thread of its own: every `CHECK_INTERVAL_S`, and at once (at most every
    `MIN_SPACING_S`) when told a connection is arriving, so a refilling flood is trimmed
    while it refills."""

    def __init__(self, *, per_peer: int, cap: int) -> None:
        self._ports: frozenset[int] = frozenset()
        self._per_peer = per_peer
        self._threshold = max(1, int(cap * PRESSURE))
        self._reserve: list[int] = []
        self._logged: dict[str, float] = {}
        self._arrived = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connection_arriving(self) -> None:
        """Called as a TLS handshake starts (on grpc's thread): check soon."""
        self._arrived.set()

    def start(self, ports: Iterable[int]) -> None:
        """Watch the connections to `ports` until `stop`."""
        if self._per_peer <= 0 or not os.path.isdir(PROC_FDS):
            return
        self._ports = frozenset(ports)
        self._hold_reserve()
        self._thread = threading.Thread(target=self._loop, name="peer-cap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._arrived.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        pressed = False
        while not self._stop.is_set():
            self._arrived.wait(PRESSED_INTERVAL_S if pressed else CHECK_INTERVAL_S)
            self._arrived.clear()
            pressed = self.pressed()
            if pressed:
                self.check()
            self._stop.wait(MIN_SPACING_S)

    def pressed(self) -> bool:
        """Whether this process holds enough descriptors that the connections may near the
        cap (a cheap look before reading the TCP tables)."""
        count = open_count()
        return count is None or count >= self._threshold

    def check(self) -> int:
        """Enforce the share once; how many connections were shut down."""
        self._release_reserve()  # looking needs descriptors even when none are left
        try:
            sockets = self._socket_fds()  # this worker's: its siblings share the port
            connections = [c for c in self._connections() if c.inode in sockets]
            if len(connections) < self._threshold:
                return 0
            excess = over_share(connections, self._per_peer)
            if not excess:
                return 0
            closed = 0
            for peer, extra in excess.items():
                shut = sum(_shut_down(sockets.get(c.inode), c.inode) for c in extra)
                closed += shut
                self._note(peer, shut, len(connections))
            return closed
        except OSError as exc:
            log.warning("cannot check the connections per peer: %s", exc)
            return 0
        finally:
            self._hold_reserve()

    def _connections(self) -> list[Connection]:
        found: list[Connection] = []
        for table in TCP_TABLES:
            try:
                with open(table) as lines:
                    found += accepted(lines, self._ports)
            except FileNotFoundError:  # no IPv6 in this network namespace
                continue
        return found

    @staticmethod
    def _socket_fds() -> dict[int, int]:
        """socket inode -> this process's descriptor for it."""
        found = {}
        for name in os.listdir(PROC_FDS):
            try:
                target = os.readlink(f"{PROC_FDS}/{name}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                found[int(target[8:-1])] = int(name)
        return found

    def _note(self, peer: str, shut: int, total: int) -> None:
        now = time.monotonic()
        if shut and now - self._logged.get(peer, float("-inf")) >= LOG_EVERY_S:
            if len(self._logged) > 1000:  # many flooding addresses: forget the old ones
                self._logged = {p: t for p, t in self._logged.items() if now - t < LOG_EVERY_S}
            self._logged[peer] = now
            log.warning(
                "peer %s held more than %d of this worker's %d connections while they near "
                "its limit: closed %d of them (--max-connections-per-peer)",
                peer,
                self._per_peer,
                total,
                shut,
            )

    def _hold_reserve(self) -> None:
        while len(self._reserve) < 2:
            try:
                self._reserve.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                return

    def _release_reserve(self) -> None:
        for fd in self._reserve:
            os.close(fd)
        self._reserve.clear()


def _shut_down(fd: int | None, inode: int) -> int:
    """Shut down the socket `fd` if it still is the one with `inode` (grpc closes it then,
    as for a peer that went away); 1 when done."""
    if fd is None:
        return 0
    try:
        copy = os.dup(fd)
    except OSError:
        return 0
    try:
        duplicate = socket.socket(fileno=copy)
    except OSError:  # no longer a socket: the descriptor was reused meanwhile
        os.close(copy)
        return 0
    try:
        if os.fstat(duplicate.fileno()).st_ino != inode:
            return 0  # the descriptor was closed and reused meanwhile: not ours to touch
        duplicate.shutdown(socket.SHUT_RDWR)
        return 1
    except OSError:
        return 0
    finally:
        duplicate.close()
