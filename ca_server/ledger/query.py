"""Filters, durations, serials and opaque cursors for listing the record.

Listing is newest first (descending seq) with keyset paging: the cursor holds
the last seq returned plus a digest of the filters, so a cursor replayed with
other filters is refused instead of silently skipping rows.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ca_server.ledger.errors import InvalidQuery
from certs import values

State = Literal["active", "expired"]
STATES: tuple[str, ...] = ("active", "expired")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def parse_duration(text: str) -> timedelta:
    """The one duration grammar of `certs.values`; `InvalidQuery` when it does not parse."""
    try:
        return values.parse_duration(text, "duration")
    except values.InvalidValue as exc:
        raise InvalidQuery(str(exc)) from None


def normalise_serial(text: str) -> str:
    """Lowercase hex without separators or leading zeros, as the record stores serials."""
    value = text.strip().lower().replace(":", "")
    if value.startswith("0x"):
        value = value[2:]
    if not value or len(value) > 64 or not re.fullmatch(r"[0-9a-f]+", value):
        raise InvalidQuery(f"serial {text!r} is not a hexadecimal certificate serial")
    return value.lstrip("0") or "0"


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateQuery:
    """Which certificates to list, and which page."""

    namespace: str | None = None
    service_account: str | None = None
    spiffe_id: str | None = None
    expiring_within: timedelta | None = None
    state: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise InvalidQuery(f"state {self.state!r} is not one of: active, expired")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}, not {self.limit}")
        if self.expiring_within is not None and self.expiring_within < timedelta(0):
            raise InvalidQuery("expiring_within must not be negative")

    def filter_digest(self) -> str:
        """A short digest of the filters (not the page), bound into cursors."""
        key = "\x00".join(
            str(v)
            for v in (
                self.namespace,
                self.service_account,
                self.spiffe_id,
                self.expiring_within,
                self.state,
            )
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def after_seq(self) -> int | None:
        """The seq the cursor points past, or None for the first page."""
        if self.cursor is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(self.cursor.encode("ascii") + b"==").decode("ascii")
            version, seq, digest = raw.split(":")
            position = int(seq)
        except (ValueError, UnicodeError) as exc:
            raise InvalidQuery("cursor is malformed; pass next_cursor back unchanged") from exc
        if version != "v1" or position < 0:
            raise InvalidQuery("cursor is malformed; pass next_cursor back unchanged")
        if digest != self.filter_digest():
            raise InvalidQuery("cursor belongs to a query with different filters")
        return position

    def cursor_after(self, seq: int) -> str:
        raw = f"v1:{seq}:{self.filter_digest()}".encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def where(self, now: datetime) -> tuple[str, list[Any]]:
        """The WHERE clause (with `?` placeholders) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("namespace", "service_account", "spiffe_id"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        now_s = int(now.timestamp())
        if self.state == "active":
            clauses.append("not_after > ?")
            params.append(now_s)
        elif self.state == "expired":
            clauses.append("not_after <= ?")
            params.append(now_s)
        if self.expiring_within is not None:
            clauses.append("not_after > ? AND not_after <= ?")
            params += [now_s, now_s + int(self.expiring_within.total_seconds())]
        after = self.after_seq()
        if after is not None:
            clauses.append("seq < ?")
            params.append(after)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
