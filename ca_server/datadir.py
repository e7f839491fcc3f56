"""The CA's data directory: created owner-only, checked like sshd's StrictModes, and locked.

Every directory the CA keeps keys, tokens, JWKS or records in (the data dir, `ca/`,
`token-issuer/`) is created 0700 whatever the umask. A group- or world-writable one, or
one owned by another user (root excepted, as sshd does), stops the CA at start: another
local user could have replaced the token issuer's JWKS or the CA key in it.

One CA owns a data dir at a time: it holds an exclusive `flock` on `<data-dir>/ca.lock`
(which names its pid) for its whole life; the kernel drops the lock when the process dies,
however it dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ca_server.errors import ConfigError

PRIVATE_DIR_MODE = 0o700
LOCK_NAME = "ca.lock"
PRIVATE_SUBDIRS = ("ca", "token-issuer")


def private_dir(path: Path, *, what: str = "directory") -> Path:
    """Create `path` 0700 (its parent must exist) or check an existing one; ConfigError on failure."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise ConfigError(
                f"{what} {path} exists but is not a directory; remove it or choose another path"
            ) from None
        return path
    except FileNotFoundError:
        raise ConfigError(_missing_parent(path, what)) from None
    except NotADirectoryError:
        raise ConfigError(
            f"cannot create {what} {path}: a parent of it is not a directory; choose another path"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"cannot create {what} {path}: permission denied in {path.parent}; "
            "fix its permissions or choose another path"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path}: {exc.strerror}") from None
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def _missing_parent(path: Path, what: str) -> str:
    """Why mkdir said ENOENT: a parent that is not there, or (when it is) a file system that
    makes no directories, such as /proc or /sys."""
    parent = path.parent
    if not parent.is_dir():
        return (
            f"cannot create {what} {path}: its parent {parent} does not exist; "
            "create it first or choose another path"
        )
    return (
        f"cannot create {what} {path}: {parent} exists but its file system does not let "
        "directories be created in it (a virtual file system such as /proc or /sys?); choose "
        "a path on a writable disk"
    )


def check_private_dir(path: Path, *, uid: int | None = None) -> None:
    """StrictModes: refuse a directory others may write to, or one owned by another user."""
    me = os.geteuid() if uid is None else uid
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot use {path}: {exc.strerror}") from None
    if info.st_uid not in (me, 0):
        raise ConfigError(
            f"{path} is owned by uid {info.st_uid}, not by this user (uid {me}); "
            f"it holds CA keys or records: `chown {me} {path}` or choose another --data-dir"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"it holds CA keys or records: `chmod 700 {path}` and check its files"
        )


def _check_usable(path: Path) -> None:
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(
            f"--data-dir {path}: permission denied (this user cannot read and write it); "
            "fix its permissions or choose another --data-dir"
        )


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data dir and its key directories owner-only; check every one of them."""
    private_dir(data_dir, what="--data-dir")
    _check_usable(data_dir)
    check_private_dir(data_dir)
    for name in PRIVATE_SUBDIRS:
        sub = data_dir / name
        if sub.exists() or sub.is_symlink():
            if not sub.is_dir():
                raise ConfigError(
                    f"{sub} is not a directory; remove it or choose another --data-dir"
                )
            check_private_dir(sub)


@dataclass
class DataDirLock:
    """An exclusive lock on a data dir, held until `release()` or the process's end."""

    path: Path
    fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take `<data-dir>/ca.lock`; a ConfigError naming the holder's pid if another CA has it."""
    return exclusive_lock(
        data_dir / LOCK_NAME,
        in_use=lambda who, path: (
            f"--data-dir {data_dir} is in use by another CA ({who}, lock {path}); "
            "stop it or give this CA its own --data-dir"
        ),
    )


def exclusive_lock(path: Path, *, in_use: Callable[[str, Path], str]) -> DataDirLock:
    """Hold an flock on `path` (0600, our pid written in it) for this process's life.

    When another process holds it, a `ConfigError` with `in_use(who, path)`, where `who`
    names the holder's pid when it wrote one.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
        who = f"pid {holder}" if holder else "another process"
        raise ConfigError(in_use(who, path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(path, fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
