"""Errors of the shared PKI core.

CertsError
├── InvalidSpiffeId      a SPIFFE ID or trust domain breaks docs/COMPATIBILITY.md §3
├── UnsupportedKey       key type or size outside the allow-list
├── CsrError             CSR unparsable, oversized, badly signed or asking for CA powers
├── ChainError           a chain does not verify against the given roots
├── SvidError            a certificate breaks the X.509-SVID rules
├── InvalidBundle        a SPIFFE bundle document cannot be read or holds a refused key
├── JwtError             a JWT breaks a rule every reader applies (dates, `crit`)
└── InvalidAudience      JWT-SVID audiences outside the one limit
"""

from __future__ import annotations


class CertsError(Exception):
    """Root of every error raised by `certs`."""


class InvalidSpiffeId(CertsError):
    """A SPIFFE ID or trust domain is malformed."""


class UnsupportedKey(CertsError):
    """A key's algorithm or size is not allowed."""


class CsrError(CertsError):
    """A certificate signing request cannot be accepted."""


class ChainError(CertsError):
    """A certificate chain does not verify."""


class SvidError(CertsError):
    """A certificate is not a conforming X.509-SVID."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("; ".join(violations))
        self.violations = violations


class InvalidBundle(CertsError):
    """A SPIFFE bundle document cannot be used; `reason` is one of
    `certs.spiffe_bundle.REFUSAL_REASONS` (a bounded metrics label)."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class JwtError(CertsError):
    """A JWT's header or claims break `certs.jwt_rules` (NumericDate claims, `crit`)."""


class InvalidAudience(CertsError):
    """A JWT-SVID request's audiences break `certs.jwt_rules.check_audiences`."""
