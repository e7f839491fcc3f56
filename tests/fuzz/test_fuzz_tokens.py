"""Fuzzing token decoding in the CA's JWT authenticator: arbitrary strings and structurally
valid tokens with arbitrary headers and claims raise only AuthenticationError (never
TypeError/ValueError -> INTERNAL), and a well-formed token round-trips to its identity."""

from __future__ import annotations

import base64
import json
import time
from functools import cache
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import jwt
from hypothesis import given
from hypothesis import strategies as st

from ca_server.authn.authenticators import JwksSource
from ca_server.authn.jwt_authenticator import JwtAuthenticator
from ca_server.authn.local_issuer import LOCAL_ISSUER, LocalIssuer
from ca_server.errors import AuthenticationError
from ca_server.identity import RequestCredentials
from certs.spiffe_id import TrustDomain

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ALGS = st.sampled_from(["RS256", "PS256", "ES256", "ES384", "HS256", "none", "EdDSA", "RS512"])
HEADER = st.fixed_dictionaries(
    {"alg": ALGS | JSON}, optional={"kid": JSON, "typ": JSON, "jku": JSON}
)
NOW = int(time.time())
CLAIM_VALUE = {
    "iss": st.just(LOCAL_ISSUER) | JSON,
    "aud": st.just(["istio-ca"]) | st.just("istio-ca") | JSON,
    "sub": st.just("system:serviceaccount:demo:frontend") | st.text(max_size=60) | JSON,
    "exp": st.integers(NOW - 10, NOW + 10**6) | JSON,
    "nbf": st.integers(NOW - 10**6, NOW + 10) | JSON,
    "iat": st.integers(NOW - 10**6, NOW + 10) | JSON,
    "kubernetes.io": JSON,
}
CLAIMS = st.fixed_dictionaries({}, optional=CLAIM_VALUE)


@cache
def issuer() -> LocalIssuer:
    return LocalIssuer.load_or_create(Path(mkdtemp(prefix="bulwark-fuzz-")))


def authenticator() -> JwtAuthenticator:
    return JwtAuthenticator(
        keys=JwksSource(jwks_file=issuer().jwks_path),
        issuer=LOCAL_ISSUER,
        audiences=["istio-ca"],
        algorithms=["RS256", "PS256", "ES256", "ES384"],
        trust_domain=TrustDomain("cluster.local"),
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def creds(token: str) -> RequestCredentials:
    return RequestCredentials(bearer_token=token, client_cert_pem=None, cluster_id="", peer="p")


def check(token: str) -> None:
    try:
        caller = authenticator().authenticate(creds(token))
    except AuthenticationError as exc:
        assert len(exc.public_message) < 400
        return
    if not token:
        assert caller is None  # no credential: the next authenticator's turn
        return
    assert caller is not None and str(caller.spiffe_id).endswith("/ns/demo/sa/frontend")


@given(st.text(max_size=300))
def test_arbitrary_text(token: str) -> None:
    check(token)


@given(HEADER, CLAIMS, st.binary(max_size=64))
def test_unsigned_structures(header: dict[str, Any], claims: dict[str, Any], sig: bytes) -> None:
    check(".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(sig)]))


@given(CLAIMS, st.sampled_from(["RS256", "PS256", "RS384"]))
def test_validly_signed_arbitrary_claims(claims: dict[str, Any], alg: str) -> None:
    payload = json.dumps(claims).encode()  # PyJWS: PyJWT's encode refuses some claim types
    token = jwt.PyJWS().encode(payload, issuer()._key, algorithm=alg, headers={"kid": issuer().kid})
    check(token)


@given(st.integers(60, 12 * 3600))
def test_a_good_token_round_trips(ttl: int) -> None:
    from datetime import timedelta

    token = issuer().mint(namespace="demo", service_account="frontend", ttl=timedelta(seconds=ttl))
    caller = authenticator().authenticate(creds(token))
    assert caller is not None and caller.subject == "system:serviceaccount:demo:frontend"
