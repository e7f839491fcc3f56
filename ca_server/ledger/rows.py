"""Converting between `IssuedCertificate`, table rows and `StoredCertificate`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ca_server.ledger.chain import HASHED_COLUMNS, ROW_COLUMNS, row_hash
from ca_server.ledger.database import Row
from ca_server.ledger.errors import LedgerWriteError
from ca_server.record import IssuedCertificate

SELECT_COLUMNS = ", ".join(ROW_COLUMNS)
INSERT_SQL = (
    f"INSERT INTO certificates ({SELECT_COLUMNS}) VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCertificate:
    """A recorded certificate as read back, with its place in the chain."""

    seq: int
    serial: str
    spiffe_id: str
    namespace: str
    service_account: str
    not_before: datetime
    not_after: datetime
    public_key_sha256: str
    authenticator: str
    subject: str
    pod_name: str
    pod_uid: str
    peer: str
    cluster_id: str
    csr_sha256: str
    issuer_serial: str
    certificate_pem: str
    recorded_at: datetime
    prev_hash: str
    row_hash: str


def _epoch(value: datetime, name: str) -> int:
    if value.tzinfo is None:
        raise LedgerWriteError(f"{name} must be timezone-aware")
    return int(value.timestamp())


def hashed_fields(entry: IssuedCertificate, *, seq: int, recorded_at: datetime) -> dict[str, Any]:
    """The hashed column values of `entry` at position `seq`."""
    return {
        "seq": seq,
        "serial": entry.serial.lower(),
        "spiffe_id": entry.spiffe_id,
        "namespace": entry.namespace,
        "service_account": entry.service_account,
        "not_before": _epoch(entry.not_before, "not_before"),
        "not_after": _epoch(entry.not_after, "not_after"),
        "public_key_sha256": entry.public_key_sha256,
        "authenticator": entry.authenticator,
        "subject": entry.subject,
        "pod_name": entry.pod_name,
        "pod_uid": entry.pod_uid,
        "peer": entry.peer,
        "cluster_id": entry.cluster_id,
        "csr_sha256": entry.csr_sha256,
        "issuer_serial": entry.issuer_serial,
        "certificate_pem": entry.certificate_pem,
        "recorded_at_us": _epoch(recorded_at, "recorded_at") * 1_000_000 + recorded_at.microsecond,
    }


def chained_row(prev_hash: str, fields: dict[str, Any]) -> tuple[Any, ...]:
    """The full insert tuple (ROW_COLUMNS order) for `fields` chained after `prev_hash`."""
    digest = row_hash(prev_hash, fields)
    return (*(fields[name] for name in HASHED_COLUMNS), prev_hash, digest)


def row_mapping(row: Row) -> dict[str, Any]:
    return dict(zip(ROW_COLUMNS, row, strict=True))


def stored_from_row(row: Row) -> StoredCertificate:
    """Build a `StoredCertificate` from a row selected with SELECT_COLUMNS."""
    values = row_mapping(row)
    recorded_us = int(values.pop("recorded_at_us"))
    values["not_before"] = datetime.fromtimestamp(int(values["not_before"]), UTC)
    values["not_after"] = datetime.fromtimestamp(int(values["not_after"]), UTC)
    values["recorded_at"] = datetime.fromtimestamp(recorded_us // 1_000_000, UTC).replace(
        microsecond=recorded_us % 1_000_000
    )
    return StoredCertificate(**values)
