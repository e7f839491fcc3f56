"""The process at the other end of a unix socket connection, as the kernel names it.

`SO_PEERCRED` gives the pid, uid and gid of the process that called `connect`. A pid is only
a number: the process may exit and the number go to another process before the agent reads
`/proc/<pid>/...` (docs/COMPATIBILITY.md §4, pid reuse). So every peer also holds a pidfd,
which names one process and never another: `SO_PEERPIDFD` (Linux 6.5) hands the connecting
process's own pidfd, so nothing can slip in between; on older kernels `pidfd_open(pid)` right
after the accept, checked against the credentials the kernel recorded (a pid reused by
another user's process is caught; one reused by the same user in that instant is not, which
is why the newer kernel is preferred). A fact read from `/proc/<pid>/` counts only if the
pidfd still says the process is alive after the read: while it lives, its pid cannot name
another process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import socket
import struct
from pathlib import Path

from agent.node.errors import CallerGone, NotAttested

PROC = Path("/proc")
SO_PEERPIDFD = 77  # include/uapi/asm-generic/socket.h, Linux 6.5+ (x86-64, arm64, ...)
_UCRED = struct.Struct("3i")
_DIGEST_CHUNK = 1 << 20


class PeerProcess:
    """One connected process: its kernel credentials and a pidfd that names exactly it."""

    __slots__ = ("_digest", "_proc", "gid", "pid", "pidfd", "start_time", "uid")

    def __init__(self, *, pid: int, uid: int, gid: int, pidfd: int, proc: Path = PROC) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid
        self.pidfd = pidfd
        self._proc = proc
        self._digest: tuple[tuple[int, int, int, int], str] | None = None
        self.start_time = _start_time(proc, pid)
        if self.exited():
            raise CallerGone(f"the process that connected (pid {pid}) has already exited")

    @classmethod
    def of_socket(cls, sock: socket.socket, *, proc: Path = PROC) -> PeerProcess:
        """The peer of an accepted unix socket, or `NotAttested`/`CallerGone` saying why not."""
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if pid <= 0:
            raise NotAttested(
                f"the kernel gives no pid for this caller (uid {uid}): it runs in a pid "
                "namespace the node agent cannot see (run the node agent with hostPID)"
            )
        pidfd, exact = _peer_pidfd(sock, pid)
        try:
            peer = cls(pid=pid, uid=uid, gid=gid, pidfd=pidfd, proc=proc)
            if not exact and uid not in peer.uids():
                raise CallerGone(
                    f"pid {pid} now belongs to a process of another user: the caller exited "
                    "and its pid was reused"
                )
        except (CallerGone, OSError) as exc:
            os.close(pidfd)
            if isinstance(exc, CallerGone):
                raise
            raise CallerGone(f"the process that connected (pid {pid}) is gone") from None
        return peer

    @property
    def key(self) -> str:
        """Names this process and no later one with the same pid."""
        return f"{self.pid}@{self.start_time}"

    def exited(self) -> bool:
        """Whether the process has exited (the pidfd turns readable at exit)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def read(self, name: str) -> bytes:
        """`/proc/<pid>/<name>` of this very process, or `CallerGone`."""
        try:
            data = (self._proc / str(self.pid) / name).read_bytes()
        except OSError:
            data = None
        self.check_alive()
        if data is None:
            raise CallerGone(f"cannot read /proc/{self.pid}/{name} of the caller")
        return data

    def check_alive(self) -> None:
        if self.exited():
            raise CallerGone(f"the process that connected (pid {self.pid}) has exited")

    def uids(self) -> tuple[int, ...]:
        """Real, effective, saved and filesystem uid, from /proc/<pid>/status."""
        return _status_ids(self.read("status"), b"Uid:")

    def ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(uids, gids) as `uids` gives them, from one read of /proc/<pid>/status."""
        status = self.read("status")
        return _status_ids(status, b"Uid:"), _status_ids(status, b"Gid:")

    def exe_path(self) -> str:
        """The executable's path as the kernel links it (` (deleted)` when replaced)."""
        try:
            target = os.readlink(self._proc / str(self.pid) / "exe")
        except OSError as exc:
            self.check_alive()
            raise CallerGone(f"cannot read the caller's executable: {exc.strerror}") from None
        self.check_alive()
        return target

    def exe_sha256(self) -> str:
        """SHA-256 of the running executable (read through /proc/<pid>/exe, so a file replaced
        on disk since the process started is not what gets hashed). Blocking: run in a thread."""
        exe = self._proc / str(self.pid) / "exe"
        try:
            st = os.stat(exe)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if self._digest is not None and self._digest[0] == signature:
                return self._digest[1]
            digest = hashlib.sha256()
            with open(exe, "rb") as binary:
                while chunk := binary.read(_DIGEST_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            self.check_alive()
            raise CallerGone(f"cannot read the caller's executable: {exc.strerror}") from None
        self.check_alive()
        self._digest = (signature, digest.hexdigest())
        return self._digest[1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.pidfd = -1


def _peer_pidfd(sock: socket.socket, pid: int) -> tuple[int, bool]:
    """(pidfd, whether the kernel tied it to the connecting process itself)."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD), True
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    try:
        return os.pidfd_open(pid), False
    except ProcessLookupError:
        raise CallerGone(f"the process that connected (pid {pid}) has already exited") from None


def _start_time(proc: Path, pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        raise CallerGone(f"the process that connected (pid {pid}) is gone") from None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
    return int(fields[19])


def _status_ids(status: bytes, label: bytes) -> tuple[int, ...]:
    for line in status.splitlines():
        if line.startswith(label):
            return tuple(int(x) for x in line.split()[1:])
    return ()
