"""Turn an authenticated caller's CSR into a checked certificate chain and its record entry (docs/COMPATIBILITY.md §1).

Signing is CPU only and never waits on I/O, so an event loop may call it directly;
the caller commits the record entry before it sends the chain.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca_server.authority.clock import ClockWatch
from ca_server.authority.material import CaMaterial
from ca_server.errors import (
    CaNotReady,
    ClockBehind,
    CsrRejected,
    IdentityMismatch,
    SigningFailed,
    TtlTooLong,
)
from ca_server.identity import Caller
from ca_server.record.entry import X509_SVID, IssuedCertificate
from certs.csr import ParsedCsr, parse_csr
from certs.errors import CertsError, CsrError, InvalidSpiffeId, UnsupportedKey
from certs.keys import generate_key, spki_der
from certs.pem import der_to_pem, serial_hex, to_pem
from certs.profile import LeafTemplate, leaf_certificate, random_serial
from certs.spiffe_id import SpiffeId
from certs.values import exact_duration
from certs.verify import verify_svid

log = logging.getLogger(__name__)
_PROBE_ID = SpiffeId.parse("spiffe://probe.invalid/ns/probe/sa/probe")


class CsrParseError(CsrRejected):
    """The CSR itself is unusable (counted as a parsing error)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    """What every issuance under one CA material shares, computed once per material."""

    material: CaMaterial
    template: LeafTemplate | None  # None: the issuer key needs the builder path
    chain_not_after: float  # earliest NotAfter of the signing cert and chain (unix seconds)
    response_tail: tuple[str, ...]  # chain PEMs then the root bundle, after each leaf
    issuer_serial: str


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed chain `[leaf, chain..., roots]` (PEMs) and the record entry to commit first."""

    chain: list[str]
    entry: IssuedCertificate


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningPolicy:
    csr_san_policy: str  # "strict" or "override"
    default_ttl: timedelta
    max_ttl: timedelta
    allow_ed25519: bool = False


class Signer:
    """Checks a CSR against the caller, signs the leaf, verifies it, returns chain and entry."""

    def __init__(
        self,
        *,
        material: Callable[[], CaMaterial | None],
        policy: SigningPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._material = material
        self._policy = policy
        self._clock = clock
        self._prepared: _Prepared | None = None
        self._clock_watch = ClockWatch(log)

    def sign(self, *, csr_pem: str, validity_s: int, caller: Caller) -> Issued:
        """The chain for `caller` and its record entry, or a CaError saying why not."""
        return self.session().sign(csr_pem=csr_pem, validity_s=validity_s, caller=caller)

    def session(self) -> SigningSession:
        """Sign several certificates (a batch) against one reading of the CA material and
        the clock, so what they share is worked out once."""
        return SigningSession(self)

    def _moment(self) -> _Moment:
        material = self._material()
        if material is None:
            raise CaNotReady("the CA has no signing material yet; retry shortly")
        now = self._clock()
        if self._clock_watch.check(material, now) is not None:
            raise ClockBehind(
                "this CA cannot sign now: its clock is before its CA certificate's validity "
                "(its operator must check the clock and NTP); retry later"
            )
        try:
            prepared = self._prepare(material, now)
        except (CertsError, ValueError, TypeError, InvalidSignature) as exc:
            log.error("issued certificate failed its own checks: %s", exc)
            raise SigningFailed("the CA could not produce a valid certificate") from exc
        # an expired chain takes the builder path, whose full verifier says so
        fast = prepared.template is not None and now.timestamp() < prepared.chain_not_after
        return _Moment(material=material, now=now, prepared=prepared, fast=fast)

    def _sign(self, moment: _Moment, parsed: ParsedCsr, caller: Caller, ttl: timedelta) -> Issued:
        prepared, now, material = moment.prepared, moment.now, moment.material
        try:
            if moment.fast:
                assert prepared.template is not None
                return self._sign_from_template(
                    prepared, prepared.template, parsed, caller, now, ttl
                )
            leaf = leaf_certificate(
                spiffe_id=caller.spiffe_id,
                public_key=parsed.public_key,
                issuer_cert=material.signing_cert,
                issuer_key=material.signing_key,
                now=now,
                ttl=ttl,
            )
            verify_svid([leaf, *material.chain], material.roots, now=now)
        except (CertsError, ValueError, TypeError, InvalidSignature) as exc:
            log.error("issued certificate failed its own checks: %s", exc)
            raise SigningFailed("the CA could not produce a valid certificate") from exc
        return _issued(
            prepared,
            parsed,
            caller,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            pem=to_pem(leaf),
        )

    @staticmethod
    def _sign_from_template(
        prepared: _Prepared,
        template: LeafTemplate,
        parsed: ParsedCsr,
        caller: Caller,
        now: datetime,
        ttl: timedelta,
    ) -> Issued:
        """The fast path: the leaf is spliced from the DER template and never re-parsed; its
        PEM and record entry come from the values the template encoded. The one self-check
        is the issuer's signature over the TBS (docs/PERFORMANCE.md says why only that one):
        the profile and the issuer's path to the roots were verified once, on a probe leaf,
        when this material was first seen."""
        leaf = template.issue(
            spiffe_id=caller.spiffe_id, spki=parsed.spki, now=now, ttl=ttl, serial=random_serial()
        )
        template.check_signature(leaf)  # InvalidSignature: the signer produced a bad signature
        return _issued(
            prepared,
            parsed,
            caller,
            serial=leaf.serial,
            not_before=leaf.not_before,
            not_after=leaf.not_after,
            pem=der_to_pem(leaf.der),
        )

    def _prepare(self, material: CaMaterial, now: datetime) -> _Prepared:
        """The per-material state, made when `material` is first seen: the DER template
        (ECDSA issuers, after a probe leaf passed the full path verification) and the
        response tail and issuer serial every certificate repeats."""
        prepared = self._prepared
        if prepared is None or prepared.material is not material:
            template: LeafTemplate | None = None
            if LeafTemplate.supports(material.signing_key):
                template = LeafTemplate(material.signing_cert, material.signing_key)
                self._probe(template, material, now)
            prepared = self._prepared = _Prepared(
                material=material,
                template=template,
                chain_not_after=min(
                    c.not_valid_after_utc.timestamp()
                    for c in (material.signing_cert, *material.chain)
                ),
                response_tail=tuple(material.response_tail()),
                issuer_serial=serial_hex(material.signing_cert),
            )
        return prepared

    @staticmethod
    def _probe(template: LeafTemplate, material: CaMaterial, now: datetime) -> None:
        """Sign a throw-away leaf from the template and run the full path verifier on it."""
        der = template.leaf_der(
            spiffe_id=_PROBE_ID,
            spki=spki_der(generate_key().public_key()),
            now=now,
            ttl=timedelta(minutes=5),
            serial=random_serial(),
        )
        verify_svid([x509.load_der_x509_certificate(der), *material.chain], material.roots, now=now)

    def _ttl(self, validity_s: int) -> timedelta:
        """The leaf lifetime for a requested `validity_duration`: range-checked as an integer
        first, since `timedelta` overflows (OverflowError) for int64-sized values."""
        if validity_s <= 0:
            return self._policy.default_ttl
        max_s = int(self._policy.max_ttl.total_seconds())
        if validity_s > max_s:
            raise TtlTooLong(
                f"requested TTL {validity_s}s ({exact_duration(validity_s)}) exceeds the maximum "
                f"of {max_s}s ({exact_duration(max_s)}, the CA's --max-workload-cert-ttl)"
            )
        return timedelta(seconds=validity_s)

    def _parse(self, csr_pem: str) -> ParsedCsr:
        try:
            parsed = parse_csr(csr_pem, allow_ed25519=self._policy.allow_ed25519)
        except (CsrError, UnsupportedKey) as exc:
            raise CsrParseError(f"CSR rejected: {exc}") from exc
        if parsed.requests_ca:
            raise CsrRejected(
                "CSR rejected: it asks for CA powers (BasicConstraints CA:true or keyCertSign)"
            )
        return parsed

    def _check_identity(self, parsed: ParsedCsr, identity: SpiffeId) -> None:
        if self._policy.csr_san_policy == "override":
            return
        if not parsed.dns_names and not parsed.other_sans and parsed.uris == (str(identity),):
            return  # the usual request: exactly the caller's (already valid) identity
        for uri in parsed.uris:
            try:
                SpiffeId.parse(uri)
            except InvalidSpiffeId as exc:
                raise CsrRejected(f"CSR URI SAN {uri!r} is not a valid SPIFFE ID: {exc}") from exc
        extra = [f"DNS:{d}" for d in parsed.dns_names] + list(parsed.other_sans)
        if extra:
            raise IdentityMismatch(
                f"CSR asks for SANs {', '.join(extra)}; only the caller's identity {identity} may be requested"
            )
        if not parsed.uris:
            return
        if parsed.uris != (str(identity),):
            raise IdentityMismatch(
                f"CSR asks for {', '.join(parsed.uris)} but the caller is {identity} "
                f"(strict CSR policy): {_mismatch_fix(parsed.uris, identity)}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Moment:
    """One reading of the material and the clock, and what signing under them needs."""

    material: CaMaterial
    now: datetime
    prepared: _Prepared
    fast: bool  # the DER template path (an ECDSA issuer whose chain has not expired)


class SigningSession:
    """`Signer.session()`: certificates signed under one reading of the material and the
    clock. Each `sign` checks its own request first, as `Signer.sign` does, so a request
    that is bad in itself is refused before the CA's readiness is asked."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._moment: _Moment | None = None

    def sign(self, *, csr_pem: str, validity_s: int, caller: Caller) -> Issued:
        signer = self._signer
        ttl = signer._ttl(validity_s)
        parsed = signer._parse(csr_pem)
        signer._check_identity(parsed, caller.spiffe_id)
        moment = self._moment
        if moment is None:
            moment = self._moment = signer._moment()
        return signer._sign(moment, parsed, caller, ttl)


def _mismatch_fix(uris: tuple[str, ...], identity: SpiffeId) -> str:
    """What the client should change when its CSR names someone else: its trust domain
    setting, or its credential, never the CA's policy. `uris` are valid SPIFFE IDs."""
    own = identity.trust_domain.name
    domains = sorted({SpiffeId.parse(uri).trust_domain.name for uri in uris} - {own})
    if domains:
        return (
            f"the CSR is for trust domain {', '.join(domains)} and this CA's is {own}: "
            "check the client's trust domain setting (TRUST_DOMAIN, --trust-domain)"
        )
    return (
        f"the CA signs only the caller's own identity, taken from its token or client "
        f"certificate: ask for {identity} (or leave the CSR's URI SAN out), or authenticate "
        "as the identity asked for"
    )


def _issued(
    prepared: _Prepared,
    parsed: ParsedCsr,
    caller: Caller,
    *,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    pem: str,
) -> Issued:
    """The response chain and the record entry of a leaf, from its values and PEM."""
    entry = IssuedCertificate(
        serial=format(serial, "x"),
        **caller.record_fields(),
        not_before=not_before,
        not_after=not_after,
        public_key_sha256=hashlib.sha256(parsed.spki).hexdigest(),
        csr_sha256=parsed.sha256,
        issuer_serial=prepared.issuer_serial,
        certificate_pem=pem,
        kind=X509_SVID,
    )
    return Issued([pem, *prepared.response_tail], entry)
