"""The CA's adversarial table: what an attacker sends to CreateCertificate, and the exact answer.

Each `Case` builds one call (CSR, raw headers, TTL, request metadata, which port, which client
certificate) against a real CA process; tests/adversarial/test_ca_grpc.py runs them. Cases
marked "defect" failed on 505d662 (issue #12): INTERNAL, a certificate, or an echoed token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.pem import to_pem
from tests.support import broken
from tests.support.broken import TokenForge, csr_pem, raw_token, sa_claims
from tests.support.ca_process import RunningCa

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
OTHER = "spiffe://cluster.local/ns/demo/sa/backend"
U = grpc.StatusCode.UNAUTHENTICATED
BAD = grpc.StatusCode.INVALID_ARGUMENT
P = grpc.StatusCode.PERMISSION_DENIED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
INT64_MAX = 2**63 - 1
# Long enough to show the old echo, short enough that the whole token stays under grpc's
# 8 KiB metadata soft limit (beyond it grpc core refuses calls at random before our code).
LONG_KID = "K" * 4500


@dataclass
class Call:
    csr: str
    headers: list[tuple[str, str]]
    ttl: int = 3600
    fields: dict[str, str] = field(default_factory=dict)
    mtls_client: tuple[bytes, bytes] | None = None  # (key PEM, chain PEM): use the renewal port


@dataclass(frozen=True)
class Case:
    name: str
    code: grpc.StatusCode
    says: str  # a fragment the status message must contain ("" for TLS-level refusals)
    build: Callable[[RunningCa, TokenForge], Call]


def _now() -> int:
    return int(time.time())


def _good_csr(uri: str = ME) -> str:
    return csr_pem(broken.good_key(), uris=(uri,)).decode()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def token_case(name: str, says: str, token: Callable[[TokenForge], str], code: Any = U) -> Case:
    return Case(name, code, says, lambda ca, f: Call(_good_csr(), bearer(token(f))))


def claims_case(name: str, says: str, **claims: Any) -> Case:
    return token_case(name, says, lambda f: f.sign(sa_claims(**claims)))


def sub_case(name: str, sub: str, says: str) -> Case:
    return claims_case(name, says, sub=sub)


def header_case(
    name: str, says: str, headers: Callable[[TokenForge], list[tuple[str, str]]]
) -> Case:
    return Case(name, U, says, lambda ca, f: Call(_good_csr(), headers(f)))


def csr_case(name: str, code: Any, says: str, csr: Callable[[], bytes | str]) -> Case:
    def build(ca: RunningCa, f: TokenForge) -> Call:
        body = csr()
        return Call(body.decode() if isinstance(body, bytes) else body, bearer(f.sign(sa_claims())))

    return Case(name, code, says, build)


def ttl_case(name: str, ttl: int, says: str) -> Case:
    return Case(name, BAD, says, lambda ca, f: Call(_good_csr(), bearer(f.sign(sa_claims())), ttl))


def impersonation_case(name: str, target: str, says: str, caller: str = "ztunnel") -> Case:
    def build(ca: RunningCa, f: TokenForge) -> Call:
        ns = "istio-system" if caller == "ztunnel" else "demo"
        token = f.sign(sa_claims(ns=ns, sa=caller))
        return Call(_good_csr(OTHER), bearer(token), fields={"ImpersonatedIdentity": target})

    return Case(name, U, says, build)


def client_cert(ca: RunningCa, spiffe_id: str, *, foreign: bool = False) -> tuple[bytes, bytes]:
    """(key PEM, leaf PEM) for `spiffe_id`, signed by the CA's root (or by a stranger)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    if foreign:
        from certs.profile import self_signed_root
        from certs.spiffe_id import TrustDomain

        stranger = ec.generate_private_key(ec.SECP256R1())
        root = self_signed_root(key=stranger, trust_domain=TrustDomain("cluster.local"), now=now)
        from certs.profile import leaf_certificate
        from certs.spiffe_id import SpiffeId

        leaf = leaf_certificate(
            spiffe_id=SpiffeId.parse(spiffe_id), public_key=key.public_key(), issuer_cert=root,
            issuer_key=stranger, now=now, ttl=timedelta(hours=1),
        )  # fmt: skip
    else:
        leaf = ca.sign_leaf(spiffe_id, key.public_key(), now=now, ttl=timedelta(hours=1))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, to_pem(leaf).encode()


def renewal_case(
    name: str, code: Any, says: str, *, identity: str = ME, csr: Callable[[], str] = _good_csr,
    ttl: int = 3600, fields: dict[str, str] | None = None, foreign: bool = False,
    headers: list[tuple[str, str]] | None = None,
) -> Case:  # fmt: skip
    def build(ca: RunningCa, f: TokenForge) -> Call:
        return Call(
            csr(), headers or [], ttl, fields or {}, client_cert(ca, identity, foreign=foreign)
        )

    return Case(name, code, says, build)


def _pss(f: TokenForge) -> str:
    return jwt.encode(sa_claims(), f.key, algorithm="PS256", headers={"kid": f.kid})


def _rs384(f: TokenForge) -> str:
    return jwt.encode(sa_claims(), f.key, algorithm="RS384", headers={"kid": f.kid})


def _header(f: TokenForge, **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": f.kid, **extra}


TOKEN_CASES = [
    header_case("no credential", "no credential", lambda f: []),
    token_case("garbage token", "not a JWT", lambda f: "garbage.token.value"),
    token_case("two-part token", "not a JWT", lambda f: "abc.def"),
    token_case("alg none", "'none' is not allowed", lambda f: f.alg_none(sa_claims())),
    token_case(
        "HS256 keyed with the RSA public key",
        "'HS256' is not allowed",
        lambda f: f.hs256_with_public_key(sa_claims()),
    ),
    # defect: PyJWT raised TypeError -> INTERNAL
    token_case(
        "ES256 header, issuer key is RSA",
        "does not match the issuer's key",
        lambda f: broken.es256_token(f.kid, sa_claims()),
    ),
    token_case(
        "ES384 header, issuer key is RSA",
        "does not match the issuer's key",
        lambda f: broken.es256_token(f.kid, sa_claims(), bits=384),
    ),
    # defect: PS256 was accepted for a JWK that says RS256
    token_case("PS256 with a key published for RS256", "does not match", _pss),
    token_case("RS384 with a key published for RS256", "does not match", _rs384),
    claims_case(
        "exp as a numeric string", "'exp' must be a number", exp=str(_now() + 3600)
    ),  # defect
    claims_case("nbf as a string", "must be a number", nbf=str(_now())),
    claims_case("iat as a string", "must be a number", iat=str(_now())),
    claims_case("exp as a boolean", "", exp=True),
    claims_case("exp in year 9999", "lifetime exceeds", exp=253402300799),  # defect
    claims_case("lifetime 25 h", "lifetime exceeds", exp=_now() + 25 * 3600),
    claims_case("expired", "expired", iat=_now() - 7200, nbf=_now() - 7200, exp=_now() - 3600),
    claims_case("not valid for an hour", "not valid yet", nbf=_now() + 3600, exp=_now() + 7200),
    claims_case("wrong issuer", "issuer", iss="https://evil.example"),
    claims_case("wrong audience", "audience", aud=["kubernetes"]),
    claims_case("audience a number", "", aud=7),
    claims_case("missing exp", "'exp'", exp=None),
    claims_case("missing sub", "'sub'", sub=None),
    claims_case("sub a number", "", sub=42),
    token_case(
        "unknown kid", "key id", lambda f: f.sign(sa_claims(), kid="nope", key=f.other_key())
    ),
    token_case(
        "known kid, another key", "signature", lambda f: f.sign(sa_claims(), key=f.other_key())
    ),
    # defect: a 6 KB kid was echoed (4.5 KB shows the same)
    token_case(
        "4.5 KB kid", "key id", lambda f: f.sign(sa_claims(), kid=LONG_KID, key=f.other_key())
    ),
    token_case("kid a number", "not a JWT", lambda f: raw_token(_header(f, kid=7), sa_claims())),
    token_case(
        "kid with control characters",
        "key id",
        lambda f: f.sign(sa_claims(), kid="a\nFORGED LOG LINE\x1b[31m", key=f.other_key()),
    ),
    token_case("signature stripped", "", lambda f: f.sign(sa_claims()).rsplit(".", 1)[0] + "."),
    token_case("header is a JSON array", "not a JWT", lambda f: raw_token([1], sa_claims())),  # type: ignore[arg-type]
    token_case("payload is a JSON array", "", lambda f: raw_token(_header(f), [1])),  # type: ignore[arg-type]
    token_case(
        "alg with a trailing space",
        "not allowed",
        lambda f: raw_token(_header(f, alg="RS256 "), sa_claims()),
    ),
    token_case(
        "embedded jwk header, signed by that key",
        "signature",
        lambda f: f.sign(sa_claims(), key=f.other_key()),
    ),
    token_case(
        "jku header pointing elsewhere",
        "",
        lambda f: raw_token(_header(f, jku="http://127.0.0.1:1/keys"), sa_claims()),
    ),
]

SUBJECT_CASES = [
    # defect: each of these was issued a malformed SPIFFE ID
    sub_case(
        "sub with a trailing newline", "system:serviceaccount:demo:frontend\n", "service account"
    ),
    sub_case("newline in the namespace", "system:serviceaccount:de\nmo:frontend", "namespace"),
    sub_case("slash path in the account", "system:serviceaccount:demo:a/sa/b", "service account"),
    sub_case("uppercase namespace", "system:serviceaccount:Demo:frontend", "namespace"),
    sub_case("64-character namespace", f"system:serviceaccount:{'n' * 64}:frontend", "namespace"),
    sub_case("account with '..'", "system:serviceaccount:demo:a..b", "service account"),
    sub_case("account with a space", "system:serviceaccount:demo:a b", "service account"),
    sub_case("empty namespace", "system:serviceaccount::frontend", "system:serviceaccount:NS:SA"),
    sub_case("extra colon part", "system:serviceaccount:demo:a:b", "system:serviceaccount:NS:SA"),
    sub_case("not a service account", "user:alice", "not a Kubernetes service account"),
    sub_case("NUL in the account", "system:serviceaccount:demo:front\x00end", "service account"),
]

HEADER_CASES = [
    # defect: the last authorization header won
    header_case(
        "two authorization headers",
        "2 'authorization' headers",
        lambda f: bearer(f.sign(sa_claims(sa="backend"))) + bearer(f.sign(sa_claims())),
    ),
    header_case(
        "the same authorization header twice",
        "2 'authorization' headers",
        lambda f: bearer(f.sign(sa_claims())) * 2,
    ),
    header_case(
        "Basic scheme",
        "must be 'Bearer <token>'",
        lambda f: [("authorization", "Basic dXNlcjpwdw==")],
    ),
    header_case(
        "Bearer without a token",
        "must be 'Bearer <token>'",
        lambda f: [("authorization", "Bearer ")],
    ),
    header_case(
        "two tokens in one header",
        "whitespace",
        lambda f: [("authorization", f"Bearer {f.sign(sa_claims())} {f.sign(sa_claims())}")],
    ),
]

IMPERSONATION_CASES = [
    impersonation_case("untrusted caller", OTHER, "CA_TRUSTED_NODE_ACCOUNTS", caller="frontend"),
    impersonation_case("target with a trailing newline", OTHER + "\n", "SPIFFE ID"),  # defect
    impersonation_case(
        "target in another trust domain", "spiffe://evil.org/ns/demo/sa/x", "trust domain"
    ),
    impersonation_case(
        "target with a slash path", "spiffe://cluster.local/ns/demo/sa/a/sa/b", "not a workload"
    ),
    impersonation_case("target not a SPIFFE ID", "backend", "SPIFFE ID"),
    impersonation_case("6 KB target", "x" * 6000, "is not a SPIFFE ID"),  # defect: echoed whole
    impersonation_case(
        "target namespace uppercase", "spiffe://cluster.local/ns/Demo/sa/x", "not a workload"
    ),
]

CSR_CASES = [
    csr_case("CSR not PEM", BAD, "not PEM", lambda: "hello, I am not a CSR"),
    csr_case("empty CSR", BAD, "not PEM", lambda: ""),
    csr_case(
        "truncated DER", BAD, "valid PKCS#10", lambda: broken.truncated_csr(_good_csr().encode())
    ),
    # defect (found by tests/fuzz): x509.InvalidVersion escaped as INTERNAL with a traceback
    csr_case(
        "CSR version 27", BAD, "valid PKCS#10", lambda: broken.bad_version_csr(_good_csr().encode())
    ),
    csr_case(
        "bad CSR signature",
        BAD,
        "signature",
        lambda: broken.bad_signature_csr(_good_csr().encode()),
    ),
    # defect: these keys were signed
    csr_case(
        "RSA-PSS SubjectPublicKeyInfo", BAD, "1.2.840.113549.1.1.10", lambda: broken.rsa_pss_csr(ME)
    ),
    csr_case(
        "RSA e = 2^40+15",
        BAD,
        "exponent",
        lambda: csr_pem(broken.rsa_with_exponent(2**40 + 15), uris=(ME,)),
    ),
    csr_case(
        "RSA 2040-bit exponent",
        BAD,
        "exponent",
        lambda: csr_pem(broken.rsa_with_exponent(broken.huge_exponent()), uris=(ME,)),
    ),
    csr_case(
        "RSA e = 3", BAD, "exponent", lambda: csr_pem(broken.rsa_with_exponent(3), uris=(ME,))
    ),
    csr_case("RSA-1024", BAD, "1024 bits", lambda: csr_pem(broken.rsa_1024(), uris=(ME,))),
    csr_case("P-521", BAD, "secp521r1", lambda: csr_pem(broken.p521(), uris=(ME,))),
    csr_case(
        "Ed25519 while disabled", BAD, "Ed25519", lambda: csr_pem(broken.ed25519_key(), uris=(ME,))
    ),
    csr_case("CA:true", BAD, "CA powers", lambda: csr_pem(broken.good_key(), uris=(ME,), ca=True)),
    csr_case(
        "keyCertSign",
        BAD,
        "CA powers",
        lambda: csr_pem(broken.good_key(), uris=(ME,), key_cert_sign=True),
    ),
    csr_case(
        "CSR over 64 KiB",
        BAD,
        "limit is 65536",
        lambda: csr_pem(broken.good_key(), uris=(ME,), padding_bytes=60000),
    ),
    csr_case(
        "URI SAN with a trailing newline",
        BAD,
        "not a valid SPIFFE ID",
        lambda: _good_csr(ME + "\n"),
    ),
    csr_case("URI SAN with a query", BAD, "query", lambda: _good_csr(ME + "?x=1")),
    csr_case(
        "URI SAN with '..'",
        BAD,
        "'..'",
        lambda: _good_csr("spiffe://cluster.local/ns/demo/../sa/x"),
    ),
    csr_case("URI SAN for a deeper path", P, "but the caller is", lambda: _good_csr(ME + "/sa/x")),
    csr_case(
        "CSR for another namespace",
        P,
        "but the caller is",
        lambda: _good_csr("spiffe://cluster.local/ns/other/sa/frontend"),
    ),
    csr_case(
        "extra DNS SAN",
        P,
        "DNS:x.demo.svc",
        lambda: csr_pem(broken.good_key(), uris=(ME,), dns=("x.demo.svc",)),
    ),
    csr_case(
        "email SAN",
        P,
        "only the caller's identity",
        lambda: csr_pem(broken.good_key(), emails=("a@example.org",)),
    ),
]

TTL_CASES = [
    ttl_case("TTL 91 days", 91 * 86400, "exceeds the maximum"),
    ttl_case("TTL 10^13 s", 10**13, "exceeds the maximum"),
    ttl_case("TTL 10^14 s", 10**14, "exceeds the maximum"),  # defect: OverflowError -> INTERNAL
    ttl_case("TTL int64 max", INT64_MAX, "exceeds the maximum"),  # defect
]

RENEWAL_CASES = [
    renewal_case(
        "renewal: CSR for another identity", P, "but the caller is", csr=lambda: _good_csr(OTHER)
    ),
    renewal_case(
        "renewal: impersonation without trust",
        U,
        "CA_TRUSTED_NODE_ACCOUNTS",
        fields={"ImpersonatedIdentity": OTHER},
    ),
    renewal_case(
        "renewal: certificate not ns/sa shaped",
        U,
        "not ns/NS/sa/SA",
        identity="spiffe://cluster.local/x/y",
        csr=lambda: _good_csr("spiffe://cluster.local/x/y"),
    ),
    renewal_case("renewal: TTL int64 max", BAD, "exceeds the maximum", ttl=INT64_MAX),
    renewal_case(
        "renewal: RSA-PSS key",
        BAD,
        "1.2.840.113549.1.1.10",
        csr=lambda: broken.rsa_pss_csr(ME).decode(),
    ),
    renewal_case(
        "renewal: RSA e = 2^40+15",
        BAD,
        "exponent",
        csr=lambda: csr_pem(broken.rsa_with_exponent(2**40 + 15), uris=(ME,)).decode(),
    ),
    renewal_case(
        "renewal: duplicate authorization headers",
        U,
        "2 'authorization' headers",
        headers=[("authorization", "Bearer a"), ("authorization", "Bearer b")],
    ),
    renewal_case("renewal: certificate from a stranger CA", UNAVAILABLE, "", foreign=True),
]

CASES = (
    TOKEN_CASES
    + SUBJECT_CASES
    + HEADER_CASES
    + IMPERSONATION_CASES
    + CSR_CASES
    + TTL_CASES
    + RENEWAL_CASES
)
