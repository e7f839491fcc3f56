"""Retention: pruning rows whose certificates expired long ago, without breaking the chain.

Only a prefix of the chain is ever removed (rows in seq order, stopping at the
first row still to be kept), and the last removed row's `(seq, row_hash)` is
kept as the anchor the remaining chain verifies from. A long-lived certificate
therefore holds back pruning of later rows until it, too, is old enough
(at most the maximum workload TTL plus the retention age).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ca_server.record.ledger.database import RecordUrl, Session
from ca_server.record.ledger.dialects import connect

log = logging.getLogger(__name__)


def prune_once(session: Session, *, cutoff: datetime, batch_size: int) -> int:
    """Remove at most `batch_size` chain-prefix rows with not_after before `cutoff`."""
    try:
        head = session.lock_head()
        rows = session.query(
            "SELECT seq, not_after, row_hash FROM certificates WHERE seq > ? ORDER BY seq LIMIT ?",
            (head.anchor_seq, batch_size),
        )
        limit = int(cutoff.timestamp())
        last: tuple[int, str] | None = None
        for seq, not_after, digest in rows:
            if int(not_after) >= limit:
                break
            last = (int(seq), str(digest))
        if last is None:
            session.rollback()
            return 0
        removed = session.execute(
            "DELETE FROM certificates WHERE seq > ? AND seq <= ?", (head.anchor_seq, last[0])
        )
        session.execute("UPDATE chain_head SET anchor_seq = ?, anchor_hash = ? WHERE id = 1", last)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return removed


class Pruner:
    """A background thread that prunes in bounded batches every `interval`."""

    def __init__(
        self,
        url: RecordUrl,
        *,
        max_age: timedelta,
        interval: timedelta,
        batch_size: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._url = url
        self._max_age = max_age
        self._interval = interval
        self._batch_size = batch_size
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-pruner", daemon=True)
        self.pruned = 0

    def start(self) -> Pruner:
        self._thread.start()
        return self

    def run_once(self, session: Session) -> int:
        """Prune batches until none is full or the pruner is stopped; return rows removed."""
        total = 0
        while not self._stop.is_set():
            removed = prune_once(
                session, cutoff=self._clock() - self._max_age, batch_size=self._batch_size
            )
            total += removed
            if removed < self._batch_size:
                break
        self.pruned += total
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval.total_seconds()):
            session: Session | None = None
            try:
                session = connect(self._url)
                removed = self.run_once(session)
                if removed:
                    log.info("pruned %d expired certificates from the record", removed)
            except Exception:  # keep pruning later; the cause is logged with its traceback
                log.exception("pruning the issuance record failed")
            finally:
                if session is not None:
                    session.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
