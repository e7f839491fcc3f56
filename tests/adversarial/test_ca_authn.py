"""In-process policy rows of the CA's authentication: leeway, lifetime, cache bound, headers,
impersonation deciders. Each names the issue #12 defect it covers."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ca_server.authn.authenticators import Authentication, JwksSource
from ca_server.authn.jwt_authenticator import JwtAuthenticator, key_fits_algorithm
from ca_server.authn.local_issuer import LOCAL_ISSUER, LocalIssuer
from ca_server.errors import AuthenticationError, ImpersonationRefused
from ca_server.identity import Caller, RequestCredentials, bearer_token_of, shown
from certs.spiffe_id import SpiffeId, TrustDomain
from tests.support.broken import sa_claims

TD = TrustDomain("cluster.local")


def creds(token: str | None) -> RequestCredentials:
    return RequestCredentials(bearer_token=token, client_cert_pem=None, cluster_id="", peer="p")


@pytest.fixture
def issuer(tmp_path: Path) -> LocalIssuer:
    return LocalIssuer.load_or_create(tmp_path)


def authenticator(issuer: LocalIssuer, **kw: object) -> JwtAuthenticator:
    return JwtAuthenticator(
        keys=JwksSource(jwks_file=issuer.jwks_path),
        issuer=LOCAL_ISSUER,
        audiences=["istio-ca"],
        algorithms=["RS256", "PS256", "ES256"],
        trust_domain=TD,
        **kw,  # type: ignore[arg-type]
    )


def sign(issuer: LocalIssuer, claims: dict[str, object]) -> str:
    key = issuer._key
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": issuer.kid})


def test_default_leeway_accepts_an_issuer_a_few_seconds_ahead(issuer: LocalIssuer) -> None:
    """Defect: leeway 0 refused a token whose iat/nbf was 1 s in the future."""
    ahead = int(time.time()) + 5
    token = sign(issuer, sa_claims(iat=ahead, nbf=ahead, exp=ahead + 600))
    assert authenticator(issuer).authenticate(creds(token)) is not None
    with pytest.raises(AuthenticationError, match="not valid yet"):
        authenticator(issuer, leeway_s=0.0).authenticate(creds(token))


def test_maximum_lifetime_is_configurable(issuer: LocalIssuer) -> None:
    now = int(time.time())
    token = sign(issuer, sa_claims(iat=now, exp=now + 7200))
    assert authenticator(issuer).authenticate(creds(token)) is not None
    with pytest.raises(AuthenticationError, match="lifetime exceeds"):
        authenticator(issuer, max_lifetime_s=3600.0).authenticate(creds(token))


def test_cache_is_bounded_independently_of_exp(issuer: LocalIssuer) -> None:
    """Defect: a token with a far `exp` was trusted from the cache until then."""
    clock = [time.time()]
    auth = authenticator(issuer, cache_seconds=300.0, clock=lambda: clock[0])
    token = sign(issuer, sa_claims(exp=int(clock[0]) + 3600))
    assert auth.authenticate(creds(token)) is not None
    digest = __import__("hashlib").sha256(token.encode()).digest()
    assert auth._cached(digest) is not None
    clock[0] += 301
    assert auth._cached(digest) is None, "the verified token outlived the cache bound"


def test_key_must_fit_the_algorithm(issuer: LocalIssuer) -> None:
    """Defect: PS256 verified against a JWK that says RS256; ES256 vs RSA raised TypeError."""
    (key,) = JwksSource(jwks_file=issuer.jwks_path).key_for(issuer.kid)
    assert key_fits_algorithm(key, "RS256")
    assert not key_fits_algorithm(key, "PS256")
    assert not key_fits_algorithm(key, "ES256")
    unlabelled = dict(issuer.jwks()["keys"][0])  # type: ignore[index]
    del unlabelled["alg"]
    assert key_fits_algorithm(jwt.PyJWK(unlabelled), "PS256")
    assert not key_fits_algorithm(jwt.PyJWK(unlabelled), "ES256")


def test_a_private_jwk_is_never_used_to_verify(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private))
    assert not key_fits_algorithm(jwt.PyJWK(jwk), "RS256")


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "2 'authorization'"),
        ([("authorization", "Basic x")], "Bearer <token>"),
        ([("authorization", "Bearer")], "Bearer <token>"),
        ([("authorization", "Bearer a b")], "whitespace"),
        # the whitespace check is str.split's now (issue #18): every str.isspace character
        ([("authorization", "Bearer a\tb")], "whitespace"),
        ([("authorization", "Bearer a\u2003b")], "whitespace"),
        ([("authorization", "Bearer a\x1cb")], "whitespace"),
        ([("authorization", b"Bearer a")], "must be text"),
    ],
)
def test_ambiguous_authorization_is_refused(headers: list[tuple[str, object]], says: str) -> None:
    """Defect: with two `authorization` headers the last one won."""
    with pytest.raises(AuthenticationError, match=says):
        bearer_token_of(headers)  # type: ignore[arg-type]


def test_one_bearer_header_gives_its_token() -> None:
    assert bearer_token_of([("clusterid", "x"), ("authorization", "bearer  t0k ")]) == "t0k"
    assert bearer_token_of([("clusterid", "x")]) is None


def test_shown_is_short_and_printable() -> None:
    text = shown("K" * 6000 + "\n\x1b[31m")
    assert len(text) < 50 and "\n" not in text and "\x1b" not in text
    assert "x0a" in shown("a\nb") and "\n" not in shown("a\nb")


class _Decider:
    name = "tokenreview"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def may_block(self, c: RequestCredentials) -> bool:
        return False

    def authenticate(self, c: RequestCredentials) -> Caller | None:
        return None

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        self.asked.append((namespace, account))


def _caller(authenticator_name: str) -> Caller:
    sid = SpiffeId.for_service_account(TD, "istio-system", "ztunnel")
    return Caller(
        spiffe_id=sid,
        namespace="istio-system",
        service_account="ztunnel",
        authenticator=authenticator_name,
    )


def test_impersonation_is_decided_by_the_kubernetes_authenticator() -> None:
    decider = _Decider()
    authn = Authentication([decider])
    authn.authorize_impersonation(_caller("tokenreview"), "demo", "backend")
    assert decider.asked == [("demo", "backend")]
    with pytest.raises(ImpersonationRefused, match="pod-bound"):
        authn.authorize_impersonation(_caller("jwt"), "demo", "backend")


def test_without_kubernetes_nothing_binds_a_caller_to_a_node(issuer: LocalIssuer) -> None:
    """Issue 23: without Kubernetes the static list alone ruled, so a trusted node account
    could act as anyone; now the node binding refuses and only a --node-identity-policy
    grant allows it (tests/unit/ca_server/test_node_policy.py)."""
    authn = Authentication([authenticator(issuer)])
    assert not authn.binds_nodes
    with pytest.raises(ImpersonationRefused, match="does not use Kubernetes"):
        authn.authorize_impersonation(_caller("jwt"), "demo", "b")


def test_default_lifetime_admits_istio_projected_tokens(issuer: LocalIssuer) -> None:
    """Istio's istio-token is projected with expirationSeconds 43200 (12 h)."""
    token = issuer.mint(namespace="demo", service_account="frontend", ttl=timedelta(hours=12))
    assert authenticator(issuer).authenticate(creds(token)) is not None
