"""The CA's bad-input table: every row a request that must be refused with its exact code.

Rows run in-process against `tests.support.testca.TestCa` (test_policy_table.py)
and a sample of them over the wire against a real CA process (test_bad_inputs.py).
`reason` is the `bulwark_ca_refusals_total` label the refusal must be counted under.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from tests.support import broken
from tests.support.broken import TokenForge, csr_pem, sa_claims

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
U = grpc.StatusCode.UNAUTHENTICATED
BAD = grpc.StatusCode.INVALID_ARGUMENT
P = grpc.StatusCode.PERMISSION_DENIED

Request = tuple[bytes | str, str | None, int, dict[str, str]]  # csr, token, ttl, metadata fields


@dataclass(frozen=True)
class Case:
    name: str
    code: grpc.StatusCode
    says: str  # a fragment the error message must contain
    reason: str  # the refusal's metric label
    build: Callable[[TokenForge], Request]


def _good(forge: TokenForge) -> str:
    return forge.sign(sa_claims())


def req(
    csr: bytes | str | None = None,
    token: Callable[[TokenForge], str | None] = _good,
    ttl: int = 3600,
    md: dict[str, str] | None = None,
) -> Callable[[TokenForge], Request]:
    def build(forge: TokenForge) -> Request:
        body = csr if csr is not None else csr_pem(broken.good_key(), uris=(ME,))
        return body, token(forge), ttl, md or {}

    return build


def tok(**claims: Any) -> Callable[[TokenForge], str]:
    """A token signed with the issuer's key, with `claims` over the good ones."""
    return lambda f: f.sign(sa_claims(**claims))


_now = int(time.time())
_GOOD_CSR = csr_pem(broken.good_key(), uris=(ME,))
_AUTH = "authentication"
_CSR = "csr_policy"


def _csr_for(*uris: str, **kw: object) -> bytes:
    return csr_pem(broken.good_key(), uris=uris, **kw)  # type: ignore[arg-type]


TOKEN_CASES = [
    Case("no token", U, "no credential", _AUTH, req(token=lambda f: None)),
    Case("garbage token", U, "not a JWT", _AUTH, req(token=lambda f: "garbage.token.value")),
    Case(
        "alg none",
        U,
        "algorithm 'none' is not allowed",
        _AUTH,
        req(token=lambda f: f.alg_none(sa_claims())),
    ),
    Case(
        "HS256 signed with the RSA public key",
        U,
        "algorithm 'HS256' is not allowed",
        _AUTH,
        req(token=lambda f: f.hs256_with_public_key(sa_claims())),
    ),
    Case(
        "expired",
        U,
        "expired",
        _AUTH,
        req(token=tok(iat=_now - 7200, nbf=_now - 7200, exp=_now - 3600)),
    ),
    Case(
        "not yet valid", U, "not valid yet", _AUTH, req(token=tok(nbf=_now + 3600, exp=_now + 7200))
    ),
    Case("wrong issuer", U, "issuer", _AUTH, req(token=tok(iss="https://evil.example"))),
    Case("wrong audience", U, "audience", _AUTH, req(token=tok(aud=["kubernetes"]))),
    Case(
        "unknown kid",
        U,
        "key id",
        _AUTH,
        req(token=lambda f: f.sign(sa_claims(), kid="unknown-kid", key=f.other_key())),
    ),
    Case(
        "known kid, other key",
        U,
        "signature",
        _AUTH,
        req(token=lambda f: f.sign(sa_claims(), key=f.other_key())),
    ),
    Case("missing exp", U, "'exp'", _AUTH, req(token=tok(exp=None))),
    Case("missing sub", U, "'sub'", _AUTH, req(token=tok(sub=None))),
    Case("missing aud", U, "'aud'", _AUTH, req(token=tok(aud=None))),
    Case(
        "sub not a service account",
        U,
        "not a Kubernetes service account",
        _AUTH,
        req(token=tok(sub="user:alice")),
    ),
    Case(
        "sub with too many parts",
        U,
        "system:serviceaccount:NS:SA",
        _AUTH,
        req(token=tok(sub="system:serviceaccount:a:b:c")),
    ),
    Case(
        "sub with an empty service account",
        U,
        "system:serviceaccount:NS:SA",
        _AUTH,
        req(token=tok(sub="system:serviceaccount:demo:")),
    ),
    Case(
        "impersonation by an untrusted caller",
        U,
        "CA_TRUSTED_NODE_ACCOUNTS",
        _AUTH,
        req(md={"ImpersonatedIdentity": "spiffe://cluster.local/ns/demo/sa/backend"}),
    ),
]

_ZTUNNEL = tok(sub="system:serviceaccount:istio-system:ztunnel")

IMPERSONATION_CASES = [
    Case(
        "trusted node impersonating a non-SPIFFE ID",
        U,
        "is not a SPIFFE ID",
        _AUTH,
        req(token=_ZTUNNEL, md={"ImpersonatedIdentity": "frontend"}),
    ),
    Case(
        "trusted node impersonating another trust domain",
        U,
        "not a workload of this trust domain",
        _AUTH,
        req(token=_ZTUNNEL, md={"ImpersonatedIdentity": "spiffe://example.org/ns/demo/sa/x"}),
    ),
    Case(
        "trusted node impersonating a non-workload path",
        U,
        "not a workload of this trust domain",
        _AUTH,
        req(token=_ZTUNNEL, md={"ImpersonatedIdentity": "spiffe://cluster.local/node/n1"}),
    ),
]

CSR_CASES = [
    Case("CSR not PEM", BAD, "not PEM", _CSR, req(csr="hello, I am not a CSR")),
    Case("empty CSR", BAD, "not PEM", _CSR, req(csr="")),
    Case("truncated DER", BAD, "valid PKCS#10", _CSR, req(csr=broken.truncated_csr(_GOOD_CSR))),
    Case(
        "bad CSR signature",
        BAD,
        "signature does not verify",
        _CSR,
        req(csr=broken.bad_signature_csr(_GOOD_CSR)),
    ),
    Case(
        "CSR for another namespace",
        P,
        "but the caller is",
        _CSR,
        req(csr=_csr_for("spiffe://cluster.local/ns/other/sa/frontend")),
    ),
    Case(
        "CSR for another service account",
        P,
        "but the caller is",
        _CSR,
        req(csr=_csr_for("spiffe://cluster.local/ns/demo/sa/backend")),
    ),
    Case(
        "two URI SANs",
        P,
        "but the caller is",
        _CSR,
        req(csr=_csr_for(ME, "spiffe://cluster.local/ns/demo/sa/backend")),
    ),
    Case(
        "an extra DNS SAN",
        P,
        "DNS:frontend.demo.svc",
        _CSR,
        req(csr=_csr_for(ME, dns=("frontend.demo.svc",))),
    ),
    Case(
        "an email SAN",
        P,
        "only the caller's identity",
        _CSR,
        req(csr=csr_pem(broken.good_key(), emails=("a@example.org",))),
    ),
    Case(
        "wrong trust domain",
        P,
        "but the caller is",
        _CSR,
        req(csr=_csr_for("spiffe://example.org/ns/demo/sa/frontend")),
    ),
    Case(
        "SPIFFE ID with a '..' segment",
        BAD,
        "'..'",
        _CSR,
        req(csr=_csr_for("spiffe://cluster.local/ns/demo/../sa/frontend")),
    ),
    Case("URI SAN with a query", BAD, "query", _CSR, req(csr=_csr_for(ME + "?x=1"))),
    Case("CA:true requested", BAD, "CA powers", _CSR, req(csr=_csr_for(ME, ca=True))),
    Case(
        "keyCertSign requested", BAD, "CA powers", _CSR, req(csr=_csr_for(ME, key_cert_sign=True))
    ),
    Case("RSA-1024 key", BAD, "1024 bits", _CSR, req(csr=csr_pem(broken.rsa_1024(), uris=(ME,)))),
    Case("P-521 key", BAD, "secp521r1", _CSR, req(csr=csr_pem(broken.p521(), uris=(ME,)))),
    Case(
        "Ed25519 key while disabled",
        BAD,
        "Ed25519",
        _CSR,
        req(csr=csr_pem(broken.ed25519_key(), uris=(ME,))),
    ),
    Case(
        "CSR over 64 KiB",
        BAD,
        "limit is 65536",
        _CSR,
        req(csr=_csr_for(ME, padding_bytes=60000)),
    ),
]

TTL_CASES = [
    Case("TTL above the maximum", BAD, "exceeds the maximum", "bad_request", req(ttl=91 * 86400)),
    Case(
        "TTL one second above the maximum",
        BAD,
        "exceeds the maximum",
        "bad_request",
        req(ttl=90 * 86400 + 1),
    ),
]

CASES = TOKEN_CASES + IMPERSONATION_CASES + CSR_CASES + TTL_CASES
BY_NAME = {case.name: case for case in CASES}
