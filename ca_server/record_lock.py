"""An SQLite record belongs to one CA process: `<record>.lock`, flocked before any worker opens it.

Two CAs with their own data dirs but the same `--record sqlite:///...` file would each
chain rows onto the file without seeing the other's head (SQLite's own locking keeps
the file intact, not the hash chain or the seq order). The supervisor takes an exclusive
`flock` on `<record file>.lock` before it or any worker opens the record, and holds it
for its whole life; a second CA stops with exit 2 naming the file. More than one replica
needs a PostgreSQL record. PostgreSQL records are shared on purpose and are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from ca_server.config import CaConfig
from ca_server.datadir import DataDirLock
from ca_server.errors import ConfigError
from ca_server.ledger import RecordUrlError, default_record_url, parse_record_url


def sqlite_record_file(config: CaConfig) -> Path | None:
    """The SQLite file the CA records into (absolute), or None for PostgreSQL or a bad URL
    (`check_record` reports a bad URL)."""
    try:
        parsed = parse_record_url(config.record or default_record_url(config.data_dir))
    except RecordUrlError:
        return None
    if parsed.dialect != "sqlite":
        return None
    return Path(parsed.target).resolve()


def lock_sqlite_record(config: CaConfig) -> DataDirLock | None:
    """Hold `<record>.lock` for an SQLite record; a `ConfigError` when another CA holds it."""
    record = sqlite_record_file(config)
    if record is None or not record.parent.is_dir():
        return None  # PostgreSQL, or a path check_record refuses with its own message
    path = record.with_name(record.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the record lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
        who = f"pid {holder}" if holder else "another process"
        raise ConfigError(
            f"--record {record} is in use by another CA ({who}, lock {path}); an SQLite record "
            "is never shared: give this CA its own record, or use a PostgreSQL record "
            "(--record postgresql://...) to run more than one replica"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(path, fd)


def _holder(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
