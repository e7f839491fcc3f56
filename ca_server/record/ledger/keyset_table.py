"""The JWT-SVID key set replicas share through the record's database (issue 22.5).

One row of the table `jwt_key_set`, beside the record's tables but outside its hash chain:
the key set as one document (private keys included, encoded by
`ca_server.spiffe.jwtsvid.keyset`) and a version every write must name, so of two replicas
writing at once exactly one wins (compare-and-set). The keys have a table of their own so
an operator can let auditors read the record without them (docs/JWT-SVID.md). The table is
created on first use, under the schema lock, and is not part of the record's schema version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ca_server.record.ledger.database import RecordUrl, Session
from ca_server.record.ledger.dialects import connect

TABLE = "jwt_key_set"
CREATE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " version BIGINT NOT NULL, document TEXT NOT NULL)"
)


class RecordKeyTable:
    """`KeySetStore` (`ca_server.spiffe.jwtsvid.shared`) on the record's database. Raises the
    driver's errors when the database cannot be used."""

    def __init__(self, url: RecordUrl) -> None:
        self._url = url
        self._created = False

    @property
    def location(self) -> str:
        return f"table {TABLE} of {self._url.redacted()}"

    @contextmanager
    def _session(self) -> Iterator[Session]:
        session = connect(self._url)
        try:
            if not self._created:
                session.begin_schema_change()
                session.execute(CREATE_SQL)
                session.commit()
                self._created = True
            yield session
        finally:
            session.rollback()
            session.close()

    def load(self) -> tuple[str, bytes | None]:
        with self._session() as session:
            row = session.query_one(f"SELECT version, document FROM {TABLE} WHERE id = 1")
        if row is None:
            return "0", None
        return str(row[0]), str(row[1]).encode("ascii")

    def compare_and_set(self, version: str, document: bytes) -> bool:
        text = document.decode("ascii")
        with self._session() as session:
            if version == "0":
                changed = session.execute(
                    f"INSERT INTO {TABLE} (id, version, document) VALUES (1, 1, ?)"
                    " ON CONFLICT (id) DO NOTHING",
                    (text,),
                )
            else:
                changed = session.execute(
                    f"UPDATE {TABLE} SET version = version + 1, document = ?"
                    " WHERE id = 1 AND version = ?",
                    (text, int(version)),
                )
        return changed == 1
