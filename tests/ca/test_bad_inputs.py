"""Every bad input gets its exact gRPC code, a message saying what was wrong, and no certificate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from tests.ca.conftest import metric
from tests.support import broken
from tests.support.broken import TokenForge, csr_pem, sa_claims
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
U = grpc.StatusCode.UNAUTHENTICATED
BAD = grpc.StatusCode.INVALID_ARGUMENT
P = grpc.StatusCode.PERMISSION_DENIED


@dataclass(frozen=True)
class Case:
    name: str
    code: grpc.StatusCode
    says: str  # a fragment the error message must contain
    build: Callable[[RunningCa, TokenForge], tuple[bytes | str, str | None, int, dict[str, str]]]


def _good(ca: RunningCa, forge: TokenForge) -> str:
    return forge.sign(sa_claims())


def req(
    csr: bytes | str | None = None,
    token: Callable[[RunningCa, TokenForge], str | None] = _good,
    ttl: int = 3600,
    md: dict[str, str] | None = None,
) -> Callable[[RunningCa, TokenForge], tuple[bytes | str, str | None, int, dict[str, str]]]:
    def build(
        ca: RunningCa, forge: TokenForge
    ) -> tuple[bytes | str, str | None, int, dict[str, str]]:
        body = csr if csr is not None else csr_pem(broken.good_key(), uris=(ME,))
        return body, token(ca, forge), ttl, md or {}

    return build


_now = int(time.time())
_GOOD_CSR = csr_pem(broken.good_key(), uris=(ME,))

CASES = [
    Case("no token", U, "no credential", req(token=lambda ca, f: None)),
    Case("garbage token", U, "not a JWT", req(token=lambda ca, f: "garbage.token.value")),
    Case(
        "alg none",
        U,
        "algorithm 'none' is not allowed",
        req(token=lambda ca, f: f.alg_none(sa_claims())),
    ),
    Case(
        "HS256 signed with the RSA public key",
        U,
        "algorithm 'HS256' is not allowed",
        req(token=lambda ca, f: f.hs256_with_public_key(sa_claims())),
    ),
    Case(
        "expired",
        U,
        "expired",
        req(
            token=lambda ca, f: f.sign(sa_claims(iat=_now - 7200, nbf=_now - 7200, exp=_now - 3600))
        ),
    ),
    Case(
        "not yet valid",
        U,
        "not valid yet",
        req(token=lambda ca, f: f.sign(sa_claims(nbf=_now + 3600, exp=_now + 7200))),
    ),
    Case(
        "wrong issuer",
        U,
        "issuer",
        req(token=lambda ca, f: f.sign(sa_claims(iss="https://evil.example"))),
    ),
    Case(
        "wrong audience",
        U,
        "audience",
        req(token=lambda ca, f: f.sign(sa_claims(aud=["kubernetes"]))),
    ),
    Case(
        "unknown kid",
        U,
        "key id",
        req(token=lambda ca, f: f.sign(sa_claims(), kid="unknown-kid", key=f.other_key())),
    ),
    Case(
        "known kid, other key",
        U,
        "signature",
        req(token=lambda ca, f: f.sign(sa_claims(), key=f.other_key())),
    ),
    Case("missing exp", U, "'exp'", req(token=lambda ca, f: f.sign(sa_claims(exp=None)))),
    Case(
        "sub not a service account",
        U,
        "not a Kubernetes service account",
        req(token=lambda ca, f: f.sign(sa_claims(sub="user:alice"))),
    ),
    Case(
        "sub with too many parts",
        U,
        "system:serviceaccount:NS:SA",
        req(token=lambda ca, f: f.sign(sa_claims(sub="system:serviceaccount:a:b:c"))),
    ),
    Case(
        "impersonation by an untrusted caller",
        U,
        "CA_TRUSTED_NODE_ACCOUNTS",
        req(md={"ImpersonatedIdentity": "spiffe://cluster.local/ns/demo/sa/backend"}),
    ),
    Case("CSR not PEM", BAD, "not PEM", req(csr="hello, I am not a CSR")),
    Case("empty CSR", BAD, "not PEM", req(csr="")),
    Case("truncated DER", BAD, "valid PKCS#10", req(csr=broken.truncated_csr(_GOOD_CSR))),
    Case(
        "bad CSR signature",
        BAD,
        "signature does not verify",
        req(csr=broken.bad_signature_csr(_GOOD_CSR)),
    ),
    Case(
        "CSR for another namespace",
        P,
        "but the caller is",
        req(csr=csr_pem(broken.good_key(), uris=("spiffe://cluster.local/ns/other/sa/frontend",))),
    ),
    Case(
        "CSR for another service account",
        P,
        "but the caller is",
        req(csr=csr_pem(broken.good_key(), uris=("spiffe://cluster.local/ns/demo/sa/backend",))),
    ),
    Case(
        "two URI SANs",
        P,
        "but the caller is",
        req(csr=csr_pem(broken.good_key(), uris=(ME, "spiffe://cluster.local/ns/demo/sa/backend"))),
    ),
    Case(
        "an extra DNS SAN",
        P,
        "DNS:frontend.demo.svc",
        req(csr=csr_pem(broken.good_key(), uris=(ME,), dns=("frontend.demo.svc",))),
    ),
    Case(
        "an email SAN",
        P,
        "only the caller's identity",
        req(csr=csr_pem(broken.good_key(), emails=("a@example.org",))),
    ),
    Case(
        "wrong trust domain",
        P,
        "but the caller is",
        req(csr=csr_pem(broken.good_key(), uris=("spiffe://example.org/ns/demo/sa/frontend",))),
    ),
    Case(
        "SPIFFE ID with a '..' segment",
        BAD,
        "'..'",
        req(
            csr=csr_pem(broken.good_key(), uris=("spiffe://cluster.local/ns/demo/../sa/frontend",))
        ),
    ),
    Case(
        "URI SAN with a query",
        BAD,
        "query",
        req(csr=csr_pem(broken.good_key(), uris=(ME + "?x=1",))),
    ),
    Case(
        "CA:true requested",
        BAD,
        "CA powers",
        req(csr=csr_pem(broken.good_key(), uris=(ME,), ca=True)),
    ),
    Case(
        "keyCertSign requested",
        BAD,
        "CA powers",
        req(csr=csr_pem(broken.good_key(), uris=(ME,), key_cert_sign=True)),
    ),
    Case("RSA-1024 key", BAD, "1024 bits", req(csr=csr_pem(broken.rsa_1024(), uris=(ME,)))),
    Case("P-521 key", BAD, "secp521r1", req(csr=csr_pem(broken.p521(), uris=(ME,)))),
    Case(
        "Ed25519 key while disabled",
        BAD,
        "Ed25519",
        req(csr=csr_pem(broken.ed25519_key(), uris=(ME,))),
    ),
    Case(
        "CSR over 64 KiB",
        BAD,
        "limit is 65536",
        req(csr=csr_pem(broken.good_key(), uris=(ME,), padding_bytes=60000)),
    ),
    Case("TTL above the maximum", BAD, "exceeds the maximum", req(ttl=91 * 86400)),
]


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_and_issues_nothing(shared_ca: RunningCa, case: Case) -> None:
    forge = TokenForge(shared_ca.data_dir)
    csr, token, ttl, md = case.build(shared_ca, forge)
    issued_before = metric(shared_ca, "citadel_server_success_cert_issuance_count")
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    with pytest.raises(grpc.RpcError) as err:
        create_certificate(chan, csr, token=token, ttl_s=ttl, metadata_fields=md)
    assert err.value.code() == case.code, err.value.details()
    assert case.says in (err.value.details() or ""), err.value.details()
    if token:
        assert token not in err.value.details(), "the token must never be echoed back"
    assert metric(shared_ca, "citadel_server_success_cert_issuance_count") == issued_before
    chan.close()


def test_ca_still_issues_after_the_table(shared_ca: RunningCa) -> None:
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    chain = create_certificate(
        chan, csr_pem(broken.good_key(), uris=(ME,)), token=shared_ca.mint_token("demo", "frontend")
    )
    assert len(chain) == 2


def test_trusted_node_account_may_impersonate(shared_ca: RunningCa) -> None:
    chan = channel(shared_ca.grpc_addr, shared_ca.root_cert_path)
    target = "spiffe://cluster.local/ns/demo/sa/backend"
    chain = create_certificate(
        chan,
        csr_pem(broken.good_key(), uris=(target,)),
        token=shared_ca.mint_token("istio-system", "ztunnel"),
        metadata_fields={"ImpersonatedIdentity": target},
    )
    from certs.pem import load_certificates
    from certs.verify import spiffe_id_of

    assert str(spiffe_id_of(load_certificates(chain[0])[0])) == target
