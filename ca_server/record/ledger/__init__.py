"""The issuance record: every certificate the CA signs, committed before the caller sees it.

SQLite (default, a WAL file in the data directory) or PostgreSQL behind one
interface. A CA worker's `AsyncRecorder` hands batches of entries to one record
thread, which commits each batch as one transaction (`RecordWriter`); writers in
any number of processes extend one linear SHA-256 hash chain under the database's
write lock, so `verify` finds any edited, removed or reordered row. Old expired
rows are pruned from the front of the chain, which stays verifiable from a kept
anchor. A record's fields are defined once
(`ca_server.record.entry.IssuedCertificate`, columns in `shape.py`); drivers sit behind
`dialects.py`. At start `integrity.guard_record` refuses a damaged record, or records a
segment break when the operator continues.
"""

from __future__ import annotations

from ca_server.record.ledger.chain import ChainBreak, VerifyReport
from ca_server.record.ledger.database import default_record_url, parse_record_url
from ca_server.record.ledger.errors import (
    InvalidQuery,
    LedgerError,
    LedgerReadError,
    LedgerWriteError,
    RecordUrlError,
    SchemaError,
)
from ca_server.record.ledger.query import CertificateQuery, parse_duration, parse_timestamp
from ca_server.record.ledger.reader import CertificatePage, LedgerReader, open_reader
from ca_server.record.ledger.recorder import ManagedRecorder, RecorderOptions, open_recorder
from ca_server.record.ledger.retention import Pruner
from ca_server.record.ledger.rows import StoredCertificate

__all__ = [
    "CertificatePage",
    "CertificateQuery",
    "ChainBreak",
    "InvalidQuery",
    "LedgerError",
    "LedgerReadError",
    "LedgerReader",
    "LedgerWriteError",
    "ManagedRecorder",
    "Pruner",
    "RecordUrlError",
    "RecorderOptions",
    "SchemaError",
    "StoredCertificate",
    "VerifyReport",
    "default_record_url",
    "open_reader",
    "open_recorder",
    "parse_duration",
    "parse_record_url",
    "parse_timestamp",
]
