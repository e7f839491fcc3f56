"""Service-account tokens at the CA with odd dates or a `crit` header, in-process against the
CA's own token issuer: each is refused (UNAUTHENTICATED) with a message naming the problem.
PyJWT alone turned NaN and Infinity into "malformed or its signature does not verify", took
"123" and `true` as numbers, and accepted `crit: ["b64"]` with `b64: true`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from ca_server.authn.authenticators import JwksSource
from ca_server.authn.jwt_authenticator import JwtAuthenticator
from ca_server.authn.local_issuer import LOCAL_ISSUER, LocalIssuer
from ca_server.errors import AuthenticationError
from ca_server.identity import RequestCredentials
from ca_server.kube.tokenreview import _unverified_exp
from certs.spiffe_id import TrustDomain
from tests.support.broken import sa_claims


@pytest.fixture
def issuer(tmp_path: Path) -> LocalIssuer:
    return LocalIssuer.load_or_create(tmp_path)


def authenticate(issuer: LocalIssuer, token: str) -> None:
    auth = JwtAuthenticator(
        keys=JwksSource(jwks_file=issuer.jwks_path),
        issuer=LOCAL_ISSUER,
        audiences=["istio-ca"],
        algorithms=["RS256"],
        trust_domain=TrustDomain("cluster.local"),
    )
    auth.authenticate(
        RequestCredentials(bearer_token=token, client_cert_pem=None, cluster_id="", peer="p")
    )


def signed(issuer: LocalIssuer, claims_json: str, **headers: Any) -> str:
    """A token over exactly `claims_json` (JSON that json.dumps would never write), properly
    signed by the issuer: only the dates or the header are wrong."""
    return jwt.api_jws.encode(
        claims_json.encode(), issuer._key, algorithm="RS256", headers={"kid": issuer.kid, **headers}
    )


def claims_with(**raw: str) -> str:
    """The good claims with some values replaced by raw JSON text."""
    text = json.dumps(sa_claims())
    for name, value in raw.items():
        text = text.replace(f'"{name}": ', f'"{name}": {value}, "_{name}": ', 1)
    return text


ROWS = [
    ("exp NaN", dict(exp="NaN"), "claim 'exp' must be a number", "not NaN"),
    ("exp Infinity", dict(exp="Infinity"), "claim 'exp' must be a number", "not Infinity"),
    ("exp 1e400", dict(exp="1e400"), "claim 'exp' must be a number", "not Infinity"),
    ("nbf -Infinity", dict(nbf="-Infinity"), "claim 'nbf' must be a number", "Infinity"),
    ("iat NaN", dict(iat="NaN"), "claim 'iat' must be a number", "NaN"),
    ("exp a string", dict(exp=f'"{int(time.time()) + 600}"'), "'exp' must be a number", "string"),
    ("iat true", dict(iat="true"), "'iat' must be a number", "boolean"),
    ("exp a fraction", dict(exp=f"{int(time.time()) + 600}.5"), "'exp' must be a number", "fraction"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "raw", "says", "why"), ROWS, ids=[r[0] for r in ROWS])
def test_odd_dates_are_refused_with_a_clear_message(
    issuer: LocalIssuer, name: str, raw: dict[str, str], says: str, why: str
) -> None:
    with pytest.raises(AuthenticationError) as err:
        authenticate(issuer, signed(issuer, claims_with(**raw)))
    assert says in err.value.public_message and why in err.value.public_message


@pytest.mark.parametrize(
    "crit", [["b64"], ["https://example.com/ext"]], ids=["b64-true", "private-extension"]
)
def test_a_crit_header_is_refused(issuer: LocalIssuer, crit: list[str]) -> None:
    extra = {"b64": True} if crit == ["b64"] else {crit[0]: 1}
    token = signed(issuer, json.dumps(sa_claims()), crit=crit, **extra)
    with pytest.raises(AuthenticationError, match="does not understand"):
        authenticate(issuer, token)
    authenticate(issuer, signed(issuer, json.dumps(sa_claims())))  # the control passes


def test_tokenreview_cache_expiry_ignores_odd_dates() -> None:
    """The review cache reads `exp` before the API server has seen the token: an integer too
    large for a float raised OverflowError (INTERNAL); odd values now mean "not cached"."""

    def token(exp_json: str) -> str:
        import base64

        body = base64.urlsafe_b64encode(f'{{"exp": {exp_json}}}'.encode()).rstrip(b"=").decode()
        return f"e30.{body}.sig"

    assert _unverified_exp(token("1893456000")) == 1893456000.0
    for odd in ("1" + "0" * 400, "NaN", "Infinity", '"1893456000"', "true", "[1]"):
        assert _unverified_exp(token(odd)) is None, odd
