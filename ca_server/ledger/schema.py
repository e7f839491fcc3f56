"""Schema of the record and its migrations; applied at start under an exclusive lock.

`schema_version` holds one row with the version applied. Each migration is a
list of statements; `{seq_type}` is the dialect's type for the seq key.
"""

from __future__ import annotations

from ca_server.ledger.chain import GENESIS_HASH
from ca_server.ledger.database import Session
from ca_server.ledger.errors import SchemaError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE certificates (
            seq {seq_type} PRIMARY KEY,
            serial TEXT NOT NULL UNIQUE,
            spiffe_id TEXT NOT NULL,
            namespace TEXT NOT NULL,
            service_account TEXT NOT NULL,
            not_before BIGINT NOT NULL,
            not_after BIGINT NOT NULL,
            public_key_sha256 TEXT NOT NULL,
            authenticator TEXT NOT NULL,
            subject TEXT NOT NULL,
            pod_name TEXT NOT NULL,
            pod_uid TEXT NOT NULL,
            peer TEXT NOT NULL,
            cluster_id TEXT NOT NULL,
            csr_sha256 TEXT NOT NULL,
            issuer_serial TEXT NOT NULL,
            certificate_pem TEXT NOT NULL,
            recorded_at_us BIGINT NOT NULL,
            prev_hash TEXT NOT NULL,
            row_hash TEXT NOT NULL
        )""",
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
)
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
