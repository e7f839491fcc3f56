"""ValidateJWTSVID with odd dates or a `crit` header, in-process: properly signed tokens whose
only fault is the date's form or an extension marked critical are refused (INVALID_ARGUMENT)
with a message naming it. Before, NaN compared false with every time and so never expired,
`iat` was not looked at, and `crit` was ignored."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.state.jwt_validate import InvalidJwt, validate_jwt_svid
from agent.state.trust_bundles import TrustBundles, intake
from certs.spiffe_id import TrustDomain
from tests.support.bundle_server import bundle, jwt_jwk

KEY = ec.generate_private_key(ec.SECP256R1())
ME = "spiffe://cluster.local/ns/demo/sa/frontend"


def bundles() -> TrustBundles:
    doc = bundle([jwt_jwk("k1", KEY)], sequence=1)
    return intake(TrustDomain("cluster.local"), {"cluster.local": doc})[0]


def token(claims_json: str, **headers: Any) -> str:
    """ES256 over exactly `claims_json`, with the bundle's key: only the form is wrong."""
    return jwt.api_jws.encode(
        claims_json.encode(), KEY, algorithm="ES256", headers={"kid": "k1", **headers}
    )


def claims(**raw: str) -> str:
    now = int(time.time())
    fields = {"sub": json.dumps(ME), "aud": '["backend"]', "exp": str(now + 600), "iat": str(now)}
    fields.update(raw)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


ROWS = [
    ("exp NaN", dict(exp="NaN"), "claim 'exp' must be a number", "NaN"),
    ("exp Infinity", dict(exp="Infinity"), "claim 'exp' must be a number", "Infinity"),
    ("exp 1e400", dict(exp="1e400"), "claim 'exp' must be a number", "Infinity"),
    ("exp huge integer", dict(exp="1" + "0" * 400), "claim 'exp'", "out of range"),
    ("exp a string", dict(exp='"99999999999"'), "claim 'exp'", "string"),
    ("exp a fraction", dict(exp=f"{int(time.time()) + 600}.25"), "claim 'exp'", "fraction"),
    ("nbf NaN", dict(nbf="NaN"), "claim 'nbf' must be a number", "NaN"),
    ("nbf true", dict(nbf="true"), "claim 'nbf'", "boolean"),
    ("iat -Infinity", dict(iat="-Infinity"), "claim 'iat' must be a number", "Infinity"),
    ("iat a string", dict(iat='"now"'), "claim 'iat'", "string"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "raw", "says", "why"), ROWS, ids=[r[0] for r in ROWS])
def test_odd_dates_are_refused(name: str, raw: dict[str, str], says: str, why: str) -> None:
    with pytest.raises(InvalidJwt) as err:
        validate_jwt_svid(token(claims(**raw)), "backend", bundles())
    assert says in err.value.public_message and why in err.value.public_message


@pytest.mark.parametrize(
    "extra", [{"crit": ["b64"], "b64": True}, {"crit": ["x-ext"], "x-ext": 1}, {"crit": []}]
)
def test_a_crit_header_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidJwt, match="crit"):
        validate_jwt_svid(token(claims(), **extra), "backend", bundles())
    subject, _ = validate_jwt_svid(token(claims()), "backend", bundles())  # the control
    assert str(subject) == ME
