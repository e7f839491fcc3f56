"""The CA's listening ports: checked free before the CA binds them, reserved for the workers'
SO_REUSEPORT group, and bound for the admin app.

A port another process listens on is a start-up error naming the flag and, when /proc
shows it, the process holding it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from pathlib import Path

from ca_server.errors import ConfigError


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def bind_socket(host: str, port: int, *, option: int, what: str) -> socket.socket:
    """A TCP socket bound to host:port with `option` set; a ConfigError naming `what` if taken."""
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every kept-alive admin response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the {what} {host}:{port}: {exc.strerror}") from exc
    return sock


def probe_free(host: str, port: int, *, what: str) -> None:
    """Refuse a port another process listens on, before this CA makes its own SO_REUSEPORT group.

    A plain bind (SO_REUSEADDR for TIME_WAIT leftovers, never SO_REUSEPORT) fails while any
    other socket listens there, including another CA's workers, which a SO_REUSEPORT bind
    would silently join.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                who = holder or "another process"
                raise ConfigError(
                    f"{what} {host}:{port} is already in use by {who}; stop it or "
                    f"choose another {what}"
                ) from None
            raise ConfigError(f"cannot bind {what} {host}:{port}: {exc.strerror}") from None


def port_holder(port: int) -> str | None:
    """Who listens on TCP `port`, when /proc shows it (best effort): `pid N, `command``.

    A worker process of a pool (a `multiprocessing` child, as the CA's are) is named by the
    process that started it, the one to stop: `pid 10, `bulwark ca serve ...` (its worker
    pid 12 holds the port)`.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    holder = _pid_holding(inodes) if inodes else None
    if holder is None:
        return None
    owner = holder
    while _is_pool_worker(owner) and (parent := _parent_pid(owner)) not in (None, 0, 1):
        owner = parent
    described = f"pid {owner}, `{_command(owner)}`"
    if owner != holder:
        described += f" (its worker pid {holder} holds the port)"
    return described


def _pid_holding(inodes: set[str]) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_pool_worker(pid: int) -> bool:
    """A `multiprocessing` spawn or forkserver child: its command line says so."""
    return any("multiprocessing" in part for part in _cmdline(pid))


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state, ppid, ...
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _command(pid: int, limit: int = 80) -> str:
    """The process's command line, its program shortened to its name (or its `comm`)."""
    words = _cmdline(pid)
    if len(words) > 1 and Path(words[0]).name.startswith("python") and words[1][:1] != "-":
        words = words[1:]  # `python /venv/bin/bulwark ca serve`: the script is the program
    if not words:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/comm").read_text().strip()
        return "unknown"
    text = " ".join([Path(words[0]).name, *words[1:]])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket so every worker can bind the same port."""
    return bind_socket(host, port, option=socket.SO_REUSEPORT, what="gRPC address")
