"""Schema of the record and its migrations; applied at start under an exclusive lock.

`schema_version` holds one row with the version applied. Each migration is a
list of statements; `{seq_type}` is the dialect's type for the seq key. The
certificates table's columns come from `IssuedCertificate` (via `shape.py`): a
field with `since=N` is added by version N's migration.
"""

from __future__ import annotations

from ca_server.record.ledger.chain import GENESIS_HASH
from ca_server.record.ledger.database import Session
from ca_server.record.ledger.errors import SchemaError
from ca_server.record.ledger.shape import ENTRY_COLUMNS


def _certificates_table() -> str:
    """Version 1 of the certificates table: the first-schema columns of `IssuedCertificate`."""
    columns = [f"{c.name} {c.sql_type} NOT NULL" for c in ENTRY_COLUMNS if c.since == 1]
    serial = columns.index("serial TEXT NOT NULL")
    columns[serial] = "serial TEXT NOT NULL UNIQUE"
    body = ",\n".join(
        [
            "seq {seq_type} PRIMARY KEY",
            *columns,
            "recorded_at_us BIGINT NOT NULL",
            "prev_hash TEXT NOT NULL",
            "row_hash TEXT NOT NULL",
        ]
    )
    return f"CREATE TABLE certificates (\n{body}\n)"


# Statements of each version beyond the columns `IssuedCertificate` adds (its `since`).
_STATEMENTS: tuple[tuple[str, ...], ...] = (
    (
        _certificates_table(),
        # Listing is newest-first keyset paging on seq within each filter.
        "CREATE INDEX certificates_by_workload ON certificates (namespace, service_account, seq)",
        "CREATE INDEX certificates_by_spiffe_id ON certificates (spiffe_id, seq)",
        "CREATE INDEX certificates_by_not_after ON certificates (not_after, seq)",
        """CREATE TABLE chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            row_hash TEXT NOT NULL,
            anchor_seq BIGINT NOT NULL,
            anchor_hash TEXT NOT NULL
        )""",
        f"INSERT INTO chain_head (id, seq, row_hash, anchor_seq, anchor_hash)"
        f" VALUES (1, 0, '{GENESIS_HASH}', 0, '{GENESIS_HASH}')",
    ),
    (
        # A segment starts where an operator chose to continue after damage: the rows
        # from first_seq chain from (prev_seq, prev_hash), whatever came before.
        """CREATE TABLE record_segments (
            id BIGINT PRIMARY KEY,
            first_seq BIGINT NOT NULL,
            prev_seq BIGINT NOT NULL,
            prev_hash TEXT NOT NULL,
            reason TEXT NOT NULL,
            started_at_us BIGINT NOT NULL
        )""",
    ),
)


def _migrations() -> tuple[tuple[str, ...], ...]:
    versions = max([len(_STATEMENTS), *(c.since for c in ENTRY_COLUMNS)])
    migrations = []
    for version in range(1, versions + 1):
        statements = list(_STATEMENTS[version - 1]) if version <= len(_STATEMENTS) else []
        for column in ENTRY_COLUMNS:
            if column.since == version > 1:
                default = "''" if column.kind == "text" else "0"
                statements.append(
                    f"ALTER TABLE certificates ADD COLUMN {column.name}"
                    f" {column.sql_type} NOT NULL DEFAULT {default}"
                )
        migrations.append(tuple(statements))
    return tuple(migrations)


MIGRATIONS = _migrations()
LATEST_VERSION = len(MIGRATIONS)


def ensure_schema(session: Session) -> int:
    """Create or migrate the schema; return the version now in force."""
    session.begin_schema_change()
    try:
        session.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        row = session.query_one("SELECT version FROM schema_version WHERE id = 1")
        current = int(row[0]) if row else 0
        if current > LATEST_VERSION:
            raise SchemaError(
                f"the record has schema version {current}, newer than this Bulwark"
                f" ({LATEST_VERSION}); upgrade Bulwark"
            )
        for statements in MIGRATIONS[current:]:
            for statement in statements:
                session.execute(statement.format(seq_type=session.seq_type))
        if row is None:
            session.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)", (LATEST_VERSION,)
            )
        elif current != LATEST_VERSION:
            session.execute("UPDATE schema_version SET version = ? WHERE id = 1", (LATEST_VERSION,))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return LATEST_VERSION
