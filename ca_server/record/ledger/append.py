"""Appending a batch of certificates to the chain in one transaction (one commit, one fsync)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.database import Session
from ca_server.record.ledger.rows import INSERT_SQL, chained_row, hashed_fields

Admit = Callable[[Sequence[IssuedCertificate]], Sequence[IssuedCertificate]]


def _all(entries: Sequence[IssuedCertificate]) -> Sequence[IssuedCertificate]:
    return entries


def append_batch(
    session: Session,
    entries: Sequence[IssuedCertificate],
    *,
    recorded_at: datetime,
    admit: Admit = _all,
) -> list[int]:
    """Chain and insert `entries` after the current head, commit, and return their seqs.

    The head is read only after the chain lock is held, so concurrent writers in
    any process extend the chain linearly. `admit` then picks the entries still worth
    recording (the lock may have taken a while: a caller that stopped waiting is
    dropped, never recorded for a certificate it will not receive). On any error the
    transaction is rolled back and the error propagates.
    """
    try:
        head = session.lock_head()
        entries = admit(entries)
        if not entries:
            session.rollback()
            return []
        prev_hash, seq = head.row_hash, head.seq
        rows = []
        for entry in entries:
            seq += 1
            row = chained_row(prev_hash, hashed_fields(entry, seq=seq, recorded_at=recorded_at))
            rows.append(row)
            prev_hash = str(row[-1])
        session.execute_many(INSERT_SQL, rows)
        session.execute(
            "UPDATE chain_head SET seq = ?, row_hash = ? WHERE id = 1", (seq, prev_hash)
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return list(range(head.seq + 1, seq + 1))
