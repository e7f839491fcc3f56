"""SPIFFE IDs and trust domains as validated, immutable values (docs/COMPATIBILITY.md §3).

Every rule is a `re.fullmatch`: Python's `$` also matches before a trailing newline, so
`"frontend\n"` passed a `^...$` check with `.match` and reached a certificate.
Kubernetes names (namespace: DNS-1123 label; service account: DNS-1123 subdomain) are
checked wherever an Istio-shaped identity `ns/<ns>/sa/<sa>` is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certs.errors import InvalidSpiffeId

_TD_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[a-zA-Z0-9._-]+")
_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAMESPACE = re.compile(_DNS1123_LABEL)
_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*")
MAX_TRUST_DOMAIN_BYTES = 255
MAX_ID_BYTES = 2048
MAX_NAMESPACE_CHARS = 63
MAX_SERVICE_ACCOUNT_CHARS = 253
_SCHEME = "spiffe://"


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A SPIFFE trust domain name such as `cluster.local`."""

    name: str

    def __post_init__(self) -> None:
        name = self.name
        if not name:
            raise InvalidSpiffeId("trust domain is empty")
        if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
            raise InvalidSpiffeId(f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
        if not _TD_CHARS.fullmatch(name):
            raise InvalidSpiffeId(
                f"trust domain {_shown(name)} may only contain lowercase letters, digits, '.', '-', '_'"
            )

    def __str__(self) -> str:
        return self.name

    @property
    def id(self) -> str:
        """The trust domain's own SPIFFE ID, `spiffe://<name>`."""
        return _SCHEME + self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A SPIFFE ID: trust domain plus a non-empty path of validated segments."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidSpiffeId("SPIFFE ID has no path; workload IDs need one")
        if not self.path.startswith("/"):
            raise InvalidSpiffeId("SPIFFE ID path must start with '/'")
        for segment in self.path[1:].split("/"):
            _check_segment(segment)
        if len(str(self).encode()) > MAX_ID_BYTES:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `spiffe://td/path`, rejecting everything docs/COMPATIBILITY.md §3 forbids."""
        if not text.startswith(_SCHEME):
            raise InvalidSpiffeId("SPIFFE ID must start with 'spiffe://'")
        if len(text.encode()) > MAX_ID_BYTES:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
        rest = text[len(_SCHEME) :]
        for bad, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
            if bad in rest:
                raise InvalidSpiffeId(f"SPIFFE ID must not contain {what}")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            raise InvalidSpiffeId("SPIFFE ID must not contain userinfo")
        if ":" in authority:
            raise InvalidSpiffeId("SPIFFE ID must not contain a port")
        return cls(TrustDomain(authority), slash + path)

    @classmethod
    def for_service_account(
        cls, trust_domain: TrustDomain, namespace: str, account: str
    ) -> SpiffeId:
        """The Istio workload identity `spiffe://<td>/ns/<ns>/sa/<sa>`; both names must be
        valid Kubernetes names (`check_namespace`, `check_service_account`)."""
        check_namespace(namespace)
        check_service_account(account)
        return cls(trust_domain, f"/ns/{namespace}/sa/{account}")

    def service_account(self) -> tuple[str, str] | None:
        """`(namespace, service account)` when the path is Istio-shaped with valid Kubernetes
        names, else None."""
        parts = self.path.split("/")
        shaped = len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa"
        if shaped and is_namespace(parts[2]) and is_service_account(parts[4]):
            return parts[2], parts[4]
        return None

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain.name}{self.path}"


def _check_segment(segment: str) -> None:
    if segment == "":
        raise InvalidSpiffeId("SPIFFE ID path has an empty segment (or a trailing '/')")
    if segment in (".", ".."):
        raise InvalidSpiffeId(f"SPIFFE ID path must not contain a {segment!r} segment")
    if not _SEGMENT_CHARS.fullmatch(segment):
        raise InvalidSpiffeId(
            f"SPIFFE ID path segment {_shown(segment)} may only contain letters, digits, '.', '-', '_'"
        )


def is_namespace(name: str) -> bool:
    """Whether `name` is a Kubernetes namespace name (DNS-1123 label, at most 63 characters)."""
    return len(name) <= MAX_NAMESPACE_CHARS and _NAMESPACE.fullmatch(name) is not None


def is_service_account(name: str) -> bool:
    """Whether `name` is a Kubernetes service-account name (DNS-1123 subdomain, at most 253)."""
    return len(name) <= MAX_SERVICE_ACCOUNT_CHARS and _SUBDOMAIN.fullmatch(name) is not None


def check_namespace(name: str) -> str:
    """`name` if it is a valid namespace name, else `InvalidSpiffeId` saying why."""
    if not is_namespace(name):
        raise InvalidSpiffeId(
            f"namespace {_shown(name)} is not a Kubernetes namespace name "
            f"(lowercase letters, digits and '-', at most {MAX_NAMESPACE_CHARS} characters)"
        )
    return name


def check_service_account(name: str) -> str:
    """`name` if it is a valid service-account name, else `InvalidSpiffeId` saying why."""
    if not is_service_account(name):
        raise InvalidSpiffeId(
            f"service account {_shown(name)} is not a Kubernetes name (lowercase letters, "
            f"digits, '-' and '.', at most {MAX_SERVICE_ACCOUNT_CHARS} characters)"
        )
    return name


def _shown(text: str, limit: int = 64) -> str:
    """A short, escaped rendering of caller-supplied text for an error message."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)
