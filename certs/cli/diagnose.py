"""Why a chain does not verify against the given roots, in words a user can act on.

The verifier's own message ("candidates exhausted: ...") says that it failed, not why;
these checks look at names, signatures and dates the way a person would.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.istio_files import ROOT_CERT


def explain(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], now: datetime
) -> str:
    """One or two sentences naming the first reason found; `` when none of these checks fires."""
    for position, cert in enumerate([*chain, *roots]):
        where = _where(position, len(chain))
        if cert.not_valid_after_utc <= now:
            return f"the {where} ({_name(cert)}) expired at {cert.not_valid_after_utc.isoformat()}"
        if cert.not_valid_before_utc > now:
            return (
                f"the {where} ({_name(cert)}) is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}: check the clock"
            )
    for child, parent in itertools.pairwise(chain):
        if child.issuer != parent.subject:
            return (
                f"the chain is out of order or incomplete: {_name(child)} was issued by "
                f"{_dn(child.issuer)}, but the next certificate is {_name(parent)}"
            )
    top = chain[-1]
    if top in roots:
        return ""
    named = [r for r in roots if r.subject == top.issuer]
    if not named:
        given = "; ".join(_name(r) for r in roots)
        return (
            f"wrong root: the chain ends at {_name(top)}, issued by {_dn(top.issuer)}, "
            f"but the given root(s) are {given}; pass the root of the CA that issued it "
            f"(its {ROOT_CERT})"
        )
    for root in named:
        try:
            top.verify_directly_issued_by(root)
            return ""
        except (ValueError, TypeError, InvalidSignature):
            continue
    return (
        f"wrong root: a root named {_dn(top.issuer)} was given, but its key did not sign "
        f"{_name(top)}; the CA's root was probably replaced since (fetch its current {ROOT_CERT})"
    )


def _where(position: int, chain_length: int) -> str:
    if position == 0:
        return "leaf"
    if position < chain_length:
        return f"chain certificate {position}"
    return f"given root {position - chain_length + 1}"


def _dn(name: x509.Name) -> str:
    return f"'{name.rfc4514_string()}'" if len(name) else "(empty name)"


def _name(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris and not len(cert.subject):
        return uris[0]
    return _dn(cert.subject)
