"""Errors of the issuance record.

    LedgerError                     root of everything `ca_server.record.ledger` raises
    ├── RecordUrlError              the `--record` URL is not sqlite or postgresql (also ValueError)
    ├── SchemaError                 the database holds a newer or foreign schema
    ├── LedgerWriteError            a certificate could not be committed (is a RecordWriteFailed,
    │                               so the CA answers INTERNAL and sends nothing)
    ├── LedgerReadError             a query against the record failed
    └── InvalidQuery                a filter, cursor or serial is malformed (also ValueError)

Messages never hold certificate private keys or tokens (the record stores neither).
"""

from __future__ import annotations

from ca_server.errors import RecordWriteFailed


class LedgerError(Exception):
    """Root of the issuance record's errors."""


class RecordUrlError(LedgerError, ValueError):
    """The record URL names no supported database."""


class SchemaError(LedgerError):
    """The database schema is newer than this code, or not a Bulwark record."""


class LedgerWriteError(LedgerError, RecordWriteFailed):
    """A certificate could not be durably recorded; it must not be sent."""

    def __init__(self, public_message: str = "the issuance record could not be written") -> None:
        RecordWriteFailed.__init__(self, public_message)

    @classmethod
    def of(cls, error: BaseException) -> LedgerWriteError:
        """`error` itself if it is one, else a new one caused by it (what a caller is told)."""
        if isinstance(error, cls):
            return error
        failure = cls()
        failure.__cause__ = error
        return failure


class LedgerReadError(LedgerError):
    """Reading the record failed (database unavailable or broken)."""


class InvalidQuery(LedgerError, ValueError):
    """A query parameter is malformed; the message says which and why."""
