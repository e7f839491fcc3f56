"""Trust bundles from the CA: the own trust domain's and every federated one's, parsed once.

The CA's `FetchTrustBundles` hands SPIFFE bundle documents (a JWKS per trust
domain), read and checked by `certs.spiffe_bundle` (json, base64, the already loaded
X.509 parser; the JWT library is loaded by the first JWT RPC, not at start). The agent
serves them in two forms: X.509 roots (DER) for `FetchX509SVID.federated_bundles`,
`FetchX509Bundles` and the SDS `ROOTCA` (each trust domain's roots kept apart), and a
JWKS of the JWT keys alone for `FetchJWTBundles` (go-spiffe's `jwtbundle.Parse` refuses a
key without `kid`, so X.509 entries stay out). The agent's own policy on top: at most
`MAX_TRUST_DOMAINS`, and a refused document leaves that domain's last good bundle in
force (`intake`). It does not order documents by `spiffe_sequence`: the CA does that for
federated domains, and CA replicas may each hold their own sequence for the own domain.
"""

from __future__ import annotations

import hashlib
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
from certs.spiffe_bundle import SpiffeBundle
from certs.spiffe_bundle import parse_bundle as parse_document
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

MAX_TRUST_DOMAINS = 64
EMPTY_JWKS = b'{"keys":[]}'


class BundleInvalid(AgentError):
    """A bundle document from the CA cannot be used (kept out; the others are served)."""

    def __init__(self, public_message: str, reason: str = "malformed") -> None:
        super().__init__(public_message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DomainBundle:
    """One trust domain's authorities: X.509 roots and the JWKS of its JWT keys."""

    trust_domain: TrustDomain
    bundle: SpiffeBundle = field(default_factory=SpiffeBundle)

    @property
    def x509_roots(self) -> tuple[x509.Certificate, ...]:
        return self.bundle.x509_authorities

    @property
    def sequence(self) -> int | None:
        return self.bundle.sequence

    @property
    def refresh_hint(self) -> timedelta | None:
        hint = self.bundle.refresh_hint
        return timedelta(seconds=hint) if hint else None

    @property
    def roots_der(self) -> bytes:
        return self.bundle.roots_der

    @property
    def jwks(self) -> bytes:
        """`{"keys": [...]}` with the JWT keys only, canonical JSON (stable bytes per content)."""
        return self.bundle.jwks

    def jwt_key(self, kid: str) -> Mapping[str, Any] | None:
        return self.bundle.jwt_key(kid)


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


@dataclass(frozen=True, slots=True)
class Refusal:
    """A document of the CA's answer that was not taken; `digest` tells a new one apart."""

    name: str
    reason: str
    message: str
    digest: str


def intake(
    own: TrustDomain, documents: Mapping[str, bytes], previous: TrustBundles | None = None
) -> tuple[TrustBundles, tuple[Refusal, ...]]:
    """Every usable document of `documents` (name -> SPIFFE bundle JSON). A refused one keeps
    the domain's bundle from `previous`, if any: one bad document never takes a domain's
    last good roots or keys away, nor the other domains down."""
    domains: dict[str, DomainBundle] = {}
    refusals: list[Refusal] = []
    for name, document in sorted(documents.items())[:MAX_TRUST_DOMAINS]:
        try:
            bundle = parse_bundle(name, document)
        except BundleInvalid as exc:
            digest = hashlib.sha256(document).hexdigest()[:16]
            refusals.append(Refusal(printable(name), exc.reason, exc.public_message, digest))
            bare = name.removeprefix("spiffe://")
            kept = previous.for_trust_domain(bare) if previous is not None else None
            if kept is not None:
                domains[bare] = kept
            continue
        domains[bundle.trust_domain.name] = bundle
    bundles = TrustBundles(trust_domain=own, domains=MappingProxyType(domains))
    return bundles, tuple(refusals)


def parse_trust_bundles(own: TrustDomain, documents: Mapping[str, bytes]) -> TrustBundles:
    """`intake` with nothing kept from before; each refusal logged."""
    bundles, refusals = intake(own, documents)
    for refusal in refusals:
        log.warning(
            "trust bundle of %s left out (%s): %s", refusal.name, refusal.reason, refusal.message
        )
    return bundles


def parse_bundle(name: str, document: bytes) -> DomainBundle:
    """One SPIFFE bundle document, or `BundleInvalid` saying what is wrong with it."""
    try:
        td = TrustDomain(name.removeprefix("spiffe://"))
    except InvalidSpiffeId as exc:
        raise BundleInvalid(f"trust domain name: {exc}") from None
    try:
        return DomainBundle(trust_domain=td, bundle=parse_document(document))
    except InvalidBundle as exc:
        raise BundleInvalid(str(exc), exc.reason) from None
