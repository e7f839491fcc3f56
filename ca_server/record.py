"""The issuance record's interface: every certificate is written here before the caller sees it.

Implementations (SQLite, PostgreSQL, behind `AsyncRecorder`) live in
`ca_server.ledger`. `await record(entry)` must return only once the entry is
durably committed; if it raises, the CA answers INTERNAL and the certificate is
never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """One issued leaf, with everything an operator may ask about it later."""

    serial: str  # lowercase hex
    spiffe_id: str
    namespace: str
    service_account: str
    not_before: datetime
    not_after: datetime
    public_key_sha256: str  # hex SHA-256 of the SPKI
    authenticator: str
    subject: str
    pod_name: str
    pod_uid: str
    peer: str
    cluster_id: str
    csr_sha256: str
    issuer_serial: str
    certificate_pem: str


class Recorder(Protocol):
    """Durable, append-only store of issued certificates, awaited on the event loop
    (`ca_server.ledger.AsyncRecorder` is the one the CA runs)."""

    async def record(self, entry: IssuedCertificate) -> None:
        """Return once `entry` is durably committed; raise a `RecordWriteFailed` otherwise."""
        ...
