"""The record's fields are defined once (`IssuedCertificate`); table, hash and API agree with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ca_server.admin.models import CertificateDetail, CertificateSummary
from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.chain import canonical
from ca_server.record.ledger.dialects import connect
from ca_server.record.ledger.recorder import prepare
from ca_server.record.ledger.rows import StoredCertificate
from ca_server.record.ledger.shape import HASHED_COLUMNS, LATE_COLUMNS, ROW_COLUMNS

FIELDS = [f.name for f in dataclasses.fields(IssuedCertificate)]


def test_table_columns_are_the_definition(tmp_path: Path) -> None:
    url = prepare(f"sqlite:///{tmp_path / 'r.db'}")
    session = connect(url)
    try:
        rows = session.query("SELECT name FROM pragma_table_info('certificates') ORDER BY cid")
    finally:
        session.close()
    # A column added by a later schema version (`since` > 1) is appended by ALTER TABLE;
    # rows are read and written by column name, and the hash is over sorted keys.
    table = tuple(r[0] for r in rows)
    late = tuple(name for name in ROW_COLUMNS if name in LATE_COLUMNS)
    assert table == (*(n for n in ROW_COLUMNS if n not in LATE_COLUMNS), *late)
    assert ("seq", *FIELDS, "recorded_at_us") == HASHED_COLUMNS


def test_stored_row_and_api_models_carry_every_field() -> None:
    stored = {f.name for f in dataclasses.fields(StoredCertificate)}
    assert stored == {*FIELDS, "seq", "recorded_at", "prev_hash", "row_hash"}
    detail = set(CertificateDetail.model_fields)
    assert detail == {
        *FIELDS,
        "seq",
        "recorded_at",
        "prev_hash",
        "row_hash",
        "state",
        "seconds_left",
    }
    assert set(CertificateSummary.model_fields) < detail


def test_a_late_column_is_hashed_only_when_set(monkeypatch: object) -> None:
    """A field added by a later schema leaves old rows' canonical bytes (and hashes) as they were."""
    import ca_server.record.ledger.chain as chain

    row = dict.fromkeys(HASHED_COLUMNS, "x")
    before = canonical(row)
    patched = {**LATE_COLUMNS, "future": ""}
    old_columns, old_late = chain.HASHED_COLUMNS, chain.LATE_COLUMNS
    chain.HASHED_COLUMNS, chain.LATE_COLUMNS = (*HASHED_COLUMNS, "future"), patched
    try:
        assert canonical({**row, "future": ""}) == before
        assert canonical({**row, "future": "set"}) != before
    finally:
        chain.HASHED_COLUMNS, chain.LATE_COLUMNS = old_columns, old_late
