"""Chain verification (`cryptography.x509.verification`) plus the X.509-SVID leaf rules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.errors import ChainError, InvalidSpiffeId, SvidError
from certs.spiffe_id import SpiffeId


def _svid_check(leaf: x509.Certificate) -> tuple[list[str], SpiffeId | None]:
    """The X.509-SVID rules `leaf` breaks and, when its one URI SAN is valid, its SPIFFE ID
    (one pass over the extensions: the CA runs this on every certificate it signs)."""
    sans: x509.Extension[x509.SubjectAlternativeName] | None = None
    bc: x509.BasicConstraints | None = None
    ku: x509.Extension[x509.KeyUsage] | None = None
    for ext in leaf.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            sans = sans or ext
        elif isinstance(value, x509.BasicConstraints):
            bc = bc or value
        elif isinstance(value, x509.KeyUsage):
            ku = ku or ext
    if sans is None:
        return ["no SubjectAlternativeName extension: an SVID needs exactly one URI SAN"], None
    problems: list[str] = []
    spiffe_id: SpiffeId | None = None
    uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        problems.append(f"has {len(uris)} URI SANs; an X.509-SVID has exactly one")
    else:
        try:
            spiffe_id = SpiffeId.parse(uris[0])
        except InvalidSpiffeId as exc:
            problems.append(f"URI SAN is not a valid workload SPIFFE ID: {exc}")
    if len(leaf.subject) == 0 and not sans.critical:
        problems.append("subject is empty but the SAN extension is not critical (RFC 5280)")
    if bc is not None and bc.ca:
        problems.append("leaf has BasicConstraints CA:true")
    if ku is None:
        problems.append("KeyUsage extension is missing")
    else:
        if not ku.critical:
            problems.append("KeyUsage extension is not critical")
        if not ku.value.digital_signature:
            problems.append("KeyUsage lacks digitalSignature")
        if ku.value.key_cert_sign or ku.value.crl_sign:
            problems.append("leaf KeyUsage has keyCertSign or cRLSign")
    return problems, spiffe_id


def svid_violations(leaf: x509.Certificate) -> list[str]:
    """Every X.509-SVID leaf rule `leaf` breaks (empty when it conforms)."""
    return _svid_check(leaf)[0]


def spiffe_id_of(leaf: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a conforming X.509-SVID, or `SvidError` naming the broken rules."""
    problems, spiffe_id = _svid_check(leaf)
    if problems or spiffe_id is None:
        raise SvidError(problems)
    return spiffe_id


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> list[x509.Certificate]:
    """Verify `chain` (leaf first) up to one of `roots` at `now`; return the verified path."""
    if not chain:
        raise ChainError("chain is empty")
    if not roots:
        raise ChainError("no trusted roots given")
    leaf, *rest = chain
    intermediates = [c for c in rest if c not in roots]
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise ChainError(f"chain does not verify against the roots: {exc}") from exc
    return list(verified.chain)


def verify_svid(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> SpiffeId:
    """Verify chain and SVID rules together; the CA runs this on every certificate it signs."""
    verify_chain(chain, roots, now=now)
    return spiffe_id_of(chain[0])


def verify_issued(
    leaf_der: bytes,
    issuer: x509.Certificate,
    *,
    now: datetime,
    issuer_key: ec.EllipticCurvePublicKey | None = None,
) -> tuple[x509.Certificate, SpiffeId]:
    """Check a leaf the CA has just signed: the issuer's signature (verified with the issuer's
    public key directly; pass `issuer_key` to skip re-reading it), its validity at `now` and
    inside the issuer's, and the X.509-SVID rules.

    The CA runs this on every certificate it signs; the issuer's own path to the roots is
    verified separately, once per CA material, with `verify_svid`.
    """
    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        if issuer_key is None:
            leaf.verify_directly_issued_by(issuer)
        else:
            if leaf.issuer != issuer.subject:
                raise ValueError("issuer name does not match")
            algorithm = leaf.signature_hash_algorithm
            if algorithm is None:
                raise ValueError("leaf has no ECDSA signature hash")
            issuer_key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ChainError(f"leaf is not signed by its issuer: {exc!r}") from exc
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ChainError("leaf is not valid now")
    if leaf.not_valid_after_utc > issuer.not_valid_after_utc:
        raise ChainError("leaf outlives its issuer")
    return leaf, spiffe_id_of(leaf)
