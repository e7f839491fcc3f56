"""A polling file watcher: cheap `stat` calls, robust to Kubernetes' symlink-swapped mounts.

Each watch names a few files and a callback that gets their bytes (None for a
file that cannot be used, with the reason in `problems`) once at registration
and again whenever any of them changes. Files are read off the event loop,
with a size cap and a timeout, and only if they are regular files: a socket
client may name any path in a `file-root:` resource, and `/dev/zero` or a
FIFO must neither grow the agent's memory nor stall its loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from agent.logs import printable

log = logging.getLogger(__name__)

Contents = tuple[bytes | None, ...]
Problems = Mapping[Path, str]
Signature = tuple[tuple[int, int, int, int] | None, ...]
OnChange = Callable[[Contents, Problems], None]

DEFAULT_MAX_FILE_BYTES = 1 << 20  # a PEM bundle of a few hundred certificates
READ_TIMEOUT_S = 5.0


class UnusableFile(Exception):
    """A watched path that exists but cannot be served: not a regular file, too big, unreadable."""


@dataclass(slots=True)
class _Watch:
    paths: tuple[Path, ...]
    on_change: OnChange
    signature: Signature = field(default=())


class FileWatcher:
    """Polls watched files every `interval`; callbacks run on the event loop."""

    def __init__(self, *, interval: timedelta, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self._interval = interval.total_seconds()
        self._max_bytes = max_bytes
        self._watches: dict[str, _Watch] = {}

    async def watch(self, key: str, paths: tuple[Path, ...], on_change: OnChange) -> None:
        """Start watching under `key` (a no-op if `key` is watched already); loads at once."""
        if key in self._watches:
            return
        watch = _Watch(paths, on_change)
        self._watches[key] = watch
        await self._check(key, watch, force=True)

    def unwatch(self, key: str) -> None:
        self._watches.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._watches

    def __len__(self) -> int:
        return len(self._watches)

    async def poll(self, *, force: bool = False) -> None:
        """Check every watch once (the loop calls this; SIGHUP and tests may too)."""
        for key, watch in list(self._watches.items()):
            await self._check(key, watch, force=force)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.poll()

    async def _check(self, key: str, watch: _Watch, *, force: bool) -> None:
        signature = tuple(_stat(p) for p in watch.paths)
        if signature == watch.signature and not force:
            return
        watch.signature = signature
        try:
            loaded = await asyncio.wait_for(
                asyncio.to_thread(_read_all, watch.paths, self._max_bytes), READ_TIMEOUT_S
            )
        except TimeoutError:
            reason = f"reading took longer than {READ_TIMEOUT_S:g}s"
            loaded = (
                tuple(None for _ in watch.paths),
                {p: f"{printable(str(p))}: {reason}" for p in watch.paths},
            )
        if self._watches.get(key) is not watch:
            return  # unwatched while reading: nobody wants the result any more
        contents, problems = loaded
        watch.on_change(contents, problems)  # the callback logs: it knows who asked


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped ..data link shows up as a new inode
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


def _read_all(paths: tuple[Path, ...], max_bytes: int) -> tuple[Contents, dict[Path, str]]:
    """Runs in a worker thread: each file's bytes, or None and why."""
    contents: list[bytes | None] = []
    problems: dict[Path, str] = {}
    for path in paths:
        try:
            contents.append(read_regular_file(path, max_bytes))
        except FileNotFoundError:
            contents.append(None)
        except UnusableFile as exc:
            contents.append(None)
            problems[path] = str(exc)
    return tuple(contents), problems


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`, else `UnusableFile`.

    Opened non-blocking so a FIFO cannot hang the open; the type is checked on the open
    descriptor, so a path swapped after a check cannot slip a device in.
    """
    shown = printable(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise UnusableFile(f"{shown}: {_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnusableFile(f"{shown} is not a regular file")
        if st.st_size > max_bytes:
            raise UnusableFile(f"{shown} is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(65536, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew since fstat, or a /proc file that reports size 0
                raise UnusableFile(f"{shown} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise UnusableFile(f"{shown}: {_reason(exc)}") from None
    finally:
        os.close(fd)


def _reason(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or errno.errorcode.get(exc.errno or 0, "cannot read")
    return "not a usable path"
