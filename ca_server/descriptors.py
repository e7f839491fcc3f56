"""File descriptors: the process's limit, how many are open, and the one place that decides
whether a failure means they ran out.

A CA holds one descriptor per client connection, so a burst of callers (or a flood of idle
connections) can use them all. Then opening anything fails with EMFILE (this process's
limit) or ENFILE (the system's): a file, a socket, SQLite's database file, whose library
says only "unable to open database file". `out_of_descriptors` recognises all of these, so
the caller is answered UNAVAILABLE (retry) instead of a misleading refusal, and `Exhaustion`
logs it, at most once per `LOG_EVERY_S`, with the numbers an operator needs.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading
import time

log = logging.getLogger("ca_server")

EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})
PROC_FDS = "/proc/self/fd"
NEAR_LIMIT = 8  # this few descriptors left counts as out of them
LOG_EVERY_S = 10.0
# A limit this high is as good as none; an infinite hard limit is raised this far only.
UNLIMITED = 1 << 20


def limit() -> int:
    """The soft RLIMIT_NOFILE: how many descriptors this process may hold."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (the default soft 1024 is far below what
    a busy CA holds); the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # a sandbox may refuse; the old limit stays
        return soft, hard
    return wanted, hard


def open_count() -> int | None:
    """How many descriptors this process holds now; None when it cannot even look (that
    takes one more descriptor) or the platform has no /proc."""
    try:
        return len(os.listdir(PROC_FDS))
    except OSError:
        return None


def near_limit() -> bool:
    """Whether this process has (almost) no descriptor left right now."""
    count = open_count()
    return count is None or count >= limit() - NEAR_LIMIT


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def out_of_descriptors(exc: BaseException, *, probe: bool = False) -> bool:
    """Whether `exc` (or what caused it) is running out of descriptors: an EMFILE or ENFILE
    anywhere in its chain or, with `probe`, any failure while this process is at its limit
    now (for libraries that hide the errno, as SQLite does)."""
    if any(isinstance(e, OSError) and e.errno in EXHAUSTED for e in _causes(exc)):
        return True
    return probe and os.path.isdir(PROC_FDS) and near_limit()


class Exhaustion:
    """Logs that descriptors ran out, at most once per `LOG_EVERY_S`, with how many calls
    were answered UNAVAILABLE for it meanwhile."""

    def __init__(self, logger: logging.Logger = log, every_s: float = LOG_EVERY_S) -> None:
        self._log = logger
        self._every = every_s
        self._last = float("-inf")
        self._since = 0
        self._lock = threading.Lock()

    def noted(self) -> None:
        with self._lock:
            self._since += 1
            now = time.monotonic()
            if now - self._last < self._every:
                return
            self._last, count, self._since = now, self._since, 0
        self._log.error(
            "out of file descriptors (%s open, limit %d): %d call(s) answered UNAVAILABLE; "
            "raise the limit (ulimit -n, the container's nofile) or spread the load over "
            "more replicas",
            open_count() or "all",
            limit(),
            count,
        )
