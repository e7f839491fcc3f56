"""A polling file watcher: cheap `stat` calls, robust to Kubernetes' symlink-swapped mounts.

Each watch names a few files and a callback that gets their bytes (None for
a missing file) once at registration and again whenever any of them changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

log = logging.getLogger(__name__)

Contents = tuple[bytes | None, ...]
Signature = tuple[tuple[int, int, int] | None, ...]


@dataclass(slots=True)
class _Watch:
    paths: tuple[Path, ...]
    on_change: Callable[[Contents], None]
    signature: Signature = field(default=())


class FileWatcher:
    """Polls watched files every `interval`; callbacks run on the event loop."""

    def __init__(self, *, interval: timedelta) -> None:
        self._interval = interval.total_seconds()
        self._watches: dict[str, _Watch] = {}

    def watch(
        self, key: str, paths: tuple[Path, ...], on_change: Callable[[Contents], None]
    ) -> None:
        """Start watching under `key` (a no-op if `key` is watched already); loads at once."""
        if key in self._watches:
            return
        watch = _Watch(paths, on_change)
        self._watches[key] = watch
        self._check(watch, force=True)

    def unwatch(self, key: str) -> None:
        self._watches.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._watches

    def poll(self) -> None:
        """Check every watch once (the loop calls this; tests may too)."""
        for watch in list(self._watches.values()):
            self._check(watch, force=False)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.poll()

    def _check(self, watch: _Watch, *, force: bool) -> None:
        signature = tuple(_stat(p) for p in watch.paths)
        if signature == watch.signature and not force:
            return
        watch.signature = signature
        watch.on_change(tuple(_read(p) for p in watch.paths))


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped ..data link shows up as a new inode
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read watched file %s: %s", path, exc.strerror)
        return None
