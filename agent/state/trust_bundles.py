"""Trust bundles from the CA: the own trust domain's and every federated one's, parsed once.

The CA's `FetchTrustBundles` hands SPIFFE bundle documents (a JWKS per trust
domain: `use: x509-svid` keys carry one certificate in `x5c`, `use: jwt-svid`
keys carry a `kid`). The agent serves them in two forms: X.509 roots (DER)
for `FetchX509SVID.federated_bundles`, `FetchX509Bundles` and the SDS
`ROOTCA`, and a JWKS of the JWT keys alone for `FetchJWTBundles` (go-spiffe's
`jwtbundle.Parse` refuses a key without `kid`, so X.509 entries stay out).
Documents are read by `certs.spiffe_bundle` (json, base64, the already loaded X.509 parser): the
JWT library is loaded by the first JWT RPC, not at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from cryptography import x509

from agent.errors import AgentError
from agent.logs import printable
from certs.errors import InvalidBundle, InvalidSpiffeId
from certs.spiffe_bundle import bundle_document, x509_authorities
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

MAX_TRUST_DOMAINS = 64
EMPTY_JWKS = b'{"keys":[]}'


class BundleInvalid(AgentError):
    """A bundle document from the CA cannot be used (kept out; the others are served)."""


@dataclass(frozen=True, slots=True)
class DomainBundle:
    """One trust domain's authorities: X.509 roots and the JWKS of its JWT keys."""

    trust_domain: TrustDomain
    x509_roots: tuple[x509.Certificate, ...] = ()
    jwt_keys: tuple[Mapping[str, Any], ...] = ()
    sequence: int | None = None
    refresh_hint: timedelta | None = None

    @property
    def roots_der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return b"".join(c.public_bytes(Encoding.DER) for c in self.x509_roots)

    @property
    def jwks(self) -> bytes:
        """`{"keys": [...]}` with the JWT keys only, canonical JSON (stable bytes per content)."""
        keys = [dict(k) for k in self.jwt_keys]
        return json.dumps({"keys": keys}, sort_keys=True, separators=(",", ":")).encode()

    def jwt_key(self, kid: str) -> Mapping[str, Any] | None:
        return next((k for k in self.jwt_keys if k.get("kid") == kid), None)


@dataclass(frozen=True, slots=True)
class TrustBundles:
    """What the CA's `FetchTrustBundles` last said, keyed by trust domain name."""

    trust_domain: TrustDomain  # the agent's own
    domains: Mapping[str, DomainBundle] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def own(self) -> DomainBundle | None:
        return self.domains.get(self.trust_domain.name)

    @property
    def federated(self) -> tuple[DomainBundle, ...]:
        return tuple(b for n, b in sorted(self.domains.items()) if n != self.trust_domain.name)

    def federated_der(self) -> dict[str, bytes]:
        """Trust domain ID -> concatenated DER roots, for the X.509 Workload API messages."""
        return {b.trust_domain.id: b.roots_der for b in self.federated if b.x509_roots}

    def jwt_bundles(self) -> dict[str, bytes]:
        """Trust domain ID -> JWKS, every trust domain (the own one even with no key yet)."""
        out = {b.trust_domain.id: b.jwks for _, b in sorted(self.domains.items())}
        out.setdefault(self.trust_domain.id, EMPTY_JWKS)
        return out

    def for_trust_domain(self, name: str) -> DomainBundle | None:
        return self.domains.get(name)

    @property
    def refresh_hint(self) -> timedelta | None:
        """The shortest hint of any bundle held (whole seconds, at least 1): a federated domain
        rotating faster than ours is followed at its pace, or its new keys would reach
        workloads only after they began to sign."""
        hints = [b.refresh_hint for b in self.domains.values() if b.refresh_hint is not None]
        return min(hints, default=None)

    @property
    def x509_version(self) -> str:
        digest = hashlib.sha256()
        for name, bundle in sorted(self.domains.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(bundle.roots_der).digest())
        return digest.hexdigest()[:16]

    @property
    def jwt_version(self) -> str:
        digest = hashlib.sha256()
        for name, jwks in sorted(self.jwt_bundles().items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(jwks).digest())
        return digest.hexdigest()[:16]

    @property
    def version(self) -> str:
        return f"{self.x509_version}-{self.jwt_version}"


def parse_trust_bundles(own: TrustDomain, documents: Mapping[str, bytes]) -> TrustBundles:
    """Every usable document of `documents` (name -> SPIFFE bundle JSON); a bad one is logged
    and left out, so one broken federation never takes the others down."""
    domains: dict[str, DomainBundle] = {}
    for name, document in sorted(documents.items())[:MAX_TRUST_DOMAINS]:
        try:
            bundle = parse_bundle(name, document)
        except BundleInvalid as exc:
            log.warning("trust bundle of %s left out: %s", printable(name), exc.public_message)
            continue
        domains[bundle.trust_domain.name] = bundle
    return TrustBundles(trust_domain=own, domains=MappingProxyType(domains))


def parse_bundle(name: str, document: bytes) -> DomainBundle:
    """One SPIFFE bundle document, or `BundleInvalid` saying what is wrong with it."""
    try:
        td = TrustDomain(name.removeprefix("spiffe://"))
    except InvalidSpiffeId as exc:
        raise BundleInvalid(f"trust domain name: {exc}") from None
    try:
        doc = bundle_document(document)
        roots = x509_authorities(doc)
    except InvalidBundle as exc:
        raise BundleInvalid(str(exc)) from None
    jwt_keys: list[Mapping[str, Any]] = []
    for key in doc["keys"]:
        if key.get("use") == "jwt-svid":
            if not isinstance(key.get("kid"), str) or not key["kid"]:
                raise BundleInvalid("a jwt-svid key has no 'kid'")
            jwt_keys.append(MappingProxyType(dict(key)))
    return DomainBundle(
        trust_domain=td,
        x509_roots=tuple(roots),
        jwt_keys=tuple(jwt_keys),
        sequence=_int_or_none(doc.get("spiffe_sequence")),
        refresh_hint=_hint(doc.get("spiffe_refresh_hint")),
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _hint(value: Any) -> timedelta | None:
    seconds = _int_or_none(value)
    return timedelta(seconds=seconds) if seconds is not None and seconds > 0 else None
