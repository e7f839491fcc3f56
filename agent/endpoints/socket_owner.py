"""Exclusive, owner-only ownership of the agent's unix socket.

One agent per socket path: `claim` takes an flock on `<socket>.lock` for the
process's lifetime and refuses to start if another agent holds it, or if any
process still answers on the socket (an agent that predates the lock). Only a
socket nobody answers on is removed as stale. The socket's directory is
created 0700 and the socket 0600 whatever the umask, unless a group and mode
are configured for an Envoy running as another user. `release` removes the
socket only if it is still the one this agent created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from agent.errors import ConfigError

log = logging.getLogger(__name__)

CONNECT_PROBE_S = 1.0


class SocketOwner:
    """Claims, prepares and finally removes one socket path."""

    def __init__(self, path: Path, *, mode: int, group: str, dir_mode: int | None = None) -> None:
        self.path = Path(os.path.abspath(path))
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._mode = mode
        self._dir_mode = dir_mode
        self._gid = _group_id(group) if group else None
        self._lock_fd: int | None = None
        self._inode: int | None = None

    @property
    def dir_mode(self) -> int:
        """0700, plus search permission for the group when the socket is open to it (a node
        agent's directory is given: every local user may reach its socket)."""
        if self._dir_mode is not None:
            return self._dir_mode
        return 0o710 if self._mode & 0o060 else 0o700

    def claim(self) -> None:
        """Take the lock and clear a stale socket, or `ConfigError` naming the socket."""
        self.prepare_directory()
        try:
            fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
        except OSError as exc:
            reason = exc.strerror
            if exc.errno in (errno.ENOTDIR, errno.EEXIST):
                reason = "a file is in the way where a directory is needed"
            raise ConfigError(
                f"cannot open lock file {self.lock_path}: {reason} (check --socket)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another agent is serving socket {self.path} (it holds {self.lock_path}); "
                "stop it or give this agent another socket path"
            ) from None
        self._lock_fd = fd
        self._remove_stale()

    def prepare_directory(self) -> None:
        """Create missing directories owner-only (umask ignored); the last gets the group."""
        missing = []
        for parent in (self.path.parent, *self.path.parent.parents):
            if parent.exists():
                break
            missing.append(parent)
        for directory in reversed(missing):
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise ConfigError(
                    f"cannot create socket directory {directory}: {exc.strerror}"
                ) from None
            os.chmod(directory, 0o700)
        if missing:
            os.chmod(self.path.parent, self.dir_mode)
            if self._gid is not None:
                os.chown(self.path.parent, -1, self._gid)
        else:
            _warn_if_open(self.path.parent)

    @contextlib.contextmanager
    def binding(self) -> Iterator[str]:
        """Around grpc's bind: a umask that leaves the new socket owner-only; yields the target."""
        old = os.umask(0o177)
        try:
            yield f"unix:{self.path}"
        finally:
            os.umask(old)

    def created(self) -> None:
        """After the bind: apply the configured mode and group and remember the socket."""
        os.chmod(self.path, self._mode)
        if self._gid is not None:
            os.chown(self.path, -1, self._gid)
        self._inode = os.lstat(self.path).st_ino

    def present(self) -> bool:
        """Whether the socket this agent created is still at its path."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode

    def release(self) -> None:
        """Remove our socket (not someone else's) and drop the lock."""
        if self._inode is not None and self.present():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._inode = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"{self.path} exists and is not a socket; refusing to replace it")
        if _answers(self.path):
            raise ConfigError(
                f"a process is answering on socket {self.path}; refusing to replace it "
                "(stop that agent or give this one another socket path)"
            )
        log.info("removing stale socket %s (nothing answers on it)", self.path)
        self.path.unlink()


def _warn_if_open(directory: Path) -> None:
    """An existing socket directory keeps its mode; say so if others may write to it."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return
    if mode & 0o022 and not mode & stat.S_ISVTX:
        log.warning(
            "socket directory %s is writable by group or others (mode %04o): another user "
            "could replace the socket; make it 0700 or 0710",
            directory,
            stat.S_IMODE(mode),
        )


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(CONNECT_PROBE_S)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # permission denied, timeout: someone else's live socket; leave it
    finally:
        probe.close()
    return True


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    import grp  # only when a group name is configured

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"BULWARK_SOCKET_GROUP {group!r} is not a group on this host") from None
