"""Can this CA commit to its issuance record right now? The supervisor's answer for /readyz.

Every `interval` the probe opens a write transaction the way a commit does (the chain
lock, with a short wait) and rolls it back. A record it cannot reach, or whose chain lock
stays taken (another replica stalled while holding it, an operator's session left open),
makes the CA not ready with one line naming the record and, on PostgreSQL, the sessions
that hold the lock; the change is logged once each way (issue 22.6: a replica that cannot
commit must say so).
"""

from __future__ import annotations

import asyncio
import logging

from ca_server.record.ledger.database import RecordUrl, Session
from ca_server.record.ledger.dialects import connect, driver_errors
from ca_server.record.ledger.errors import LedgerError

log = logging.getLogger(__name__)
PROBE_INTERVAL_S = 1.0
PROBE_LOCK_WAIT_S = 1.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class RecordProbe:
    """Probes the record's write path; `problem` is None while commits can go through."""

    def __init__(
        self,
        url: RecordUrl,
        *,
        interval_s: float = PROBE_INTERVAL_S,
        lock_wait_s: float = PROBE_LOCK_WAIT_S,
    ) -> None:
        self._url = url
        self._interval = interval_s
        self._lock_wait = lock_wait_s
        self._errors: tuple[type[Exception], ...] = (LedgerError, OSError, *driver_errors(url))
        self._session: Session | None = None
        self._checking = False
        self.problem: str | None = None

    def check(self) -> str | None:
        """Take the chain lock and let it go; None, or what stops a commit (one line)."""
        self._checking = True
        try:
            if self._session is None:
                self._session = connect(self._url, lock_wait_s=self._lock_wait)
            self._session.lock_head()
            self._session.rollback()
            return None
        except self._errors as exc:
            return self._failed(exc)
        finally:
            self._checking = False

    def _failed(self, exc: BaseException) -> str:
        problem = f"issuance record {self._url.redacted()} cannot commit: {_one_line(exc)}"
        if self._session is not None:
            self._session.rollback()
            holders = self._session.lock_holders()
            if holders:
                problem += f" (chain lock held by: {holders})"
            self._session.close()
            self._session = None
        return problem

    def detail(self) -> tuple[bool, str]:
        """(ready, detail) for /readyz."""
        if self.problem is None:
            return True, "issuance record commits"
        return False, self.problem

    async def run(self) -> None:
        """Probe every interval until cancelled; log when commits stop and when they resume."""
        try:
            while True:
                problem = await asyncio.to_thread(self.check)
                if problem is not None and self.problem is None:
                    log.error("%s; this CA reports not ready until it can", problem)
                elif problem is None and self.problem is not None:
                    log.warning("issuance record commits again; this CA is ready")
                self.problem = problem
                await asyncio.sleep(self._interval)
        finally:
            if self._session is not None and not self._checking:  # else its thread still uses it
                self._session.close()
