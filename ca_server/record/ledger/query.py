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
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ca_server.record.entry import JWT_SVID, X509_SVID
from ca_server.record.ledger.errors import InvalidQuery
from certs import values

State = Literal["active", "expired"]
STATES: tuple[str, ...] = ("active", "expired")
Kind = Literal["x509-svid", "jwt-svid"]
KINDS: tuple[str, ...] = (X509_SVID, JWT_SVID)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_DURATION = timedelta(days=36500)  # 100 years: far beyond any certificate, far from overflow
MAX_SEQ = 2**63 - 1  # the largest seq either database can hold
MAX_FILTER_LENGTH = 2048  # a SPIFFE ID is at most 2048 bytes (SPIFFE-ID spec)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_duration(text: str, name: str = "duration") -> timedelta:
    """The one duration grammar of `certs.values`, at most 36500d; `InvalidQuery` otherwise."""
    try:
        value = values.parse_duration(text, name)
    except values.InvalidValue as exc:
        raise InvalidQuery(str(exc)) from None
    if value > MAX_DURATION:
        raise InvalidQuery(f"{name} {_shown(text)} is longer than the limit of 36500d")
    return value


def _shown(text: str) -> str:
    """`text` fit for an error message: short, no control characters."""
    return repr(_CONTROL.sub("?", text[:64]))


def parse_timestamp(text: str, name: str) -> datetime:
    """An RFC 3339 timestamp with a UTC offset (`2026-01-02T03:04:05Z`); `InvalidQuery` if not."""
    try:
        if len(text) > 64:
            raise ValueError
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidQuery(
            f"{name} {_shown(text)} is not an RFC 3339 timestamp like 2026-01-02T03:04:05Z"
        ) from None
    if value.tzinfo is None:
        raise InvalidQuery(f"{name} needs a UTC offset (Z or +hh:mm): {_shown(text)}")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise InvalidQuery(f"{name} {_shown(text)} is out of range") from None


def check_filter(name: str, value: str | None) -> None:
    """A text filter is bounded and printable (`InvalidQuery` otherwise)."""
    if value is None:
        return
    if len(value) > MAX_FILTER_LENGTH:
        raise InvalidQuery(f"{name} is longer than {MAX_FILTER_LENGTH} characters")
    if _CONTROL.search(value):
        raise InvalidQuery(f"{name} contains control characters")


def normalise_serial(text: str) -> str:
    """Lowercase hex without separators or leading zeros, as the record stores serials."""
    value = text.strip().lower().replace(":", "")
    if value.startswith("0x"):
        value = value[2:]
    if not value or len(value) > 64 or not re.fullmatch(r"[0-9a-f]+", value):
        raise InvalidQuery(f"serial {_shown(text)} is not a hexadecimal certificate serial")
    return value.lstrip("0") or "0"


# Columns a query matches exactly.
FILTER_COLUMNS = ("namespace", "service_account", "spiffe_id", "cluster_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateQuery:
    """Which certificates to list, and which page."""

    namespace: str | None = None
    service_account: str | None = None
    spiffe_id: str | None = None
    cluster_id: str | None = None  # the cluster the request named (unindexed: combine filters)
    expiring_within: timedelta | None = None
    issued_since: datetime | None = None  # recorded at or after this
    issued_before: datetime | None = None  # recorded before this
    state: str | None = None
    kind: str | None = None  # x509-svid (also rows from before schema 3) or jwt-svid
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise InvalidQuery(f"state {self.state!r} is not one of: active, expired")
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidQuery(f"kind {_shown(self.kind)} is not one of: {', '.join(KINDS)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}, not {self.limit}")
        if self.expiring_within is not None and not (
            timedelta(0) <= self.expiring_within <= MAX_DURATION
        ):
            raise InvalidQuery("expiring_within must be between 0 and 36500d")
        for name in FILTER_COLUMNS:
            check_filter(name, getattr(self, name))
        for name in ("issued_since", "issued_before"):
            stamp = getattr(self, name)
            if stamp is not None and stamp.tzinfo is None:
                raise InvalidQuery(f"{name} must be timezone-aware")
        if self.issued_since and self.issued_before and self.issued_since >= self.issued_before:
            raise InvalidQuery("issued_since must be before issued_before")
        if self.cursor is not None and len(self.cursor) > 256:
            raise InvalidQuery("cursor is malformed; pass next_cursor back unchanged")

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
                *(() if self.issued_since is None else ("since", self.issued_since.isoformat())),
                *(() if self.issued_before is None else ("before", self.issued_before.isoformat())),
                *(() if self.kind is None else ("kind", self.kind)),
                *(() if self.cluster_id is None else ("cluster", self.cluster_id)),
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
        if version != "v1" or not 0 <= position <= MAX_SEQ:
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
        for column in FILTER_COLUMNS:
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.kind == JWT_SVID:
            clauses.append("kind = ?")
            params.append(JWT_SVID)
        elif self.kind == X509_SVID:  # rows written before schema 3 have no kind: X.509
            clauses.append("kind IN (?, ?)")
            params += [X509_SVID, ""]
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
        if self.issued_since is not None:
            clauses.append("recorded_at_us >= ?")
            params.append(_epoch_us(self.issued_since))
        if self.issued_before is not None:
            clauses.append("recorded_at_us < ?")
            params.append(_epoch_us(self.issued_before))
        after = self.after_seq()
        if after is not None:
            clauses.append("seq < ?")
            params.append(after)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _epoch_us(value: datetime) -> int:
    """Microseconds since the epoch, as `recorded_at_us` stores them (exact, any year)."""
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
