"""Appending a batch of certificates to the chain in one transaction (one commit, one fsync)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.database import Session
from ca_server.record.ledger.rows import INSERT_SQL, chained_row, hashed_fields


def append_batch(
    session: Session, entries: Sequence[IssuedCertificate], *, recorded_at: datetime
) -> list[int]:
    """Chain and insert `entries` after the current head, commit, and return their seqs.

    The head is read only after the chain lock is held, so concurrent writers in
    any process extend the chain linearly. On any error the transaction is rolled
    back and the error propagates.
    """
    try:
        head = session.lock_head()
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
