"""JWT-SVID validation and trust bundle parsing, in-process: one row per rule of the spec."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from agent.state.jwt_validate import InvalidJwt, validate_jwt_svid
from agent.state.trust_bundles import TrustBundles, parse_bundle, parse_trust_bundles
from certs.spiffe_id import TrustDomain


@dataclass
class SigningKey:
    kid: str
    key: ec.EllipticCurvePrivateKey


def new_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()))


def jwk_of(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.key.public_key(), as_dict=True)
    jwk.update(kid=key.kid, use="jwt-svid", alg="ES256")
    return jwk


def bundle_document(keys: list[SigningKey], *, sequence: int, refresh_hint: int) -> bytes:
    """A SPIFFE bundle with these JWT keys only (the shape the CA's builder writes)."""
    doc = {
        "keys": [jwk_of(k) for k in keys],
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint,
    }
    return json.dumps(doc).encode()


ME = "spiffe://cluster.local/ns/demo/sa/frontend"
KEY = new_key("k1")
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P384 = SigningKey("p384", ec.generate_private_key(ec.SECP384R1()))


def bundles() -> TrustBundles:
    doc = json.loads(bundle_document([KEY], sequence=1, refresh_hint=5))
    rsa_jwk: dict[str, Any] = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    p384: dict[str, Any] = jwk_of(P384)
    doc["keys"] += [rsa_jwk | {"kid": "rsa", "use": "jwt-svid"}, p384]
    return parse_trust_bundles(
        TrustDomain("cluster.local"), {"cluster.local": json.dumps(doc).encode()}
    )


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    # an hour: the table is built at collection, maybe minutes before its rows run
    out: dict[str, Any] = {"sub": ME, "aud": ["backend"], "exp": now + 3600, "iat": now}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def es256(body: dict[str, Any], kid: str = "k1", **headers: Any) -> str:
    return jwt.encode(body, KEY.key, algorithm="ES256", headers={"kid": kid, **headers})


def unsigned(header: dict[str, Any], body: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(body)}.c2ln"


def test_a_valid_token_gives_its_id_and_claims() -> None:
    spiffe_id, got = validate_jwt_svid(es256(claims()), "backend", bundles())
    assert str(spiffe_id) == ME and got["aud"] == ["backend"]
    rs = jwt.encode(claims(), RSA_KEY, algorithm="PS256", headers={"kid": "rsa"})
    assert str(validate_jwt_svid(rs, "backend", bundles())[0]) == ME
    es384 = jwt.encode(claims(), P384.key, algorithm="ES384", headers={"kid": "p384"})
    assert str(validate_jwt_svid(es384, "backend", bundles())[0]) == ME


def relabelled(alg: str) -> str:
    """A PS256 token whose header claims another RSA algorithm (same key, same signature)."""
    _, body, sig = jwt.encode(claims(), RSA_KEY, algorithm="PS256", headers={"kid": "rsa"}).split(
        "."
    )
    head = unsigned({"alg": alg, "kid": "rsa"}, {}).split(".")[0]
    return f"{head}.{body}.{sig}"


REFUSED = [
    ("alg none", unsigned({"alg": "none", "kid": "k1"}, claims()), "not allowed"),
    (
        "alg HS256",
        jwt.encode(claims(), "secret" * 6, algorithm="HS256", headers={"kid": "k1"}),
        "not allowed",
    ),
    ("no kid", jwt.encode(claims(), KEY.key, algorithm="ES256"), "no 'kid'"),
    ("typ other", es256(claims(), typ="at+jwt"), "typ"),
    (
        "alg against key type",
        jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k1"}),
        "does not match",
    ),
    ("ES384 on a P-256 key", unsigned({"alg": "ES384", "kid": "k1"}, claims()), "does not match"),
    ("unknown kid", es256(claims(), kid="k9"), "not in the bundle"),
    (
        "forged signature",
        jwt.encode(claims(), new_key("k1").key, algorithm="ES256", headers={"kid": "k1"}),
        "signature does not verify",
    ),
    ("expired", es256(claims(exp=int(time.time()) - 5)), "expired"),
    ("not yet valid", es256(claims(nbf=int(time.time()) + 1800)), "not valid yet"),
    ("short signature", es256(claims())[:-20], "signature does not verify"),
    ("PS256 signature relabelled RS256", relabelled("RS256"), "signature does not verify"),
    ("header not JSON", "bm90IGpzb24.e30.c2ln", "not a JWT"),
    ("claims a list", unsigned({"alg": "ES256", "kid": "k1"}, [1]), "JSON objects"),  # type: ignore[arg-type]
    ("no exp", es256(claims(exp=None)), "no numeric 'exp'"),
    ("no aud", es256(claims(aud=None)), "aud"),
    ("other aud", es256(claims(aud=["frontend"])), "aud does not include"),
    ("sub not SPIFFE", es256(claims(sub="system:serviceaccount:a:b")), "not a SPIFFE ID"),
    ("no sub", es256(claims(sub=None)), "no 'sub'"),
    ("foreign trust domain", es256(claims(sub="spiffe://elsewhere.example/w")), "no bundle"),
    ("not a JWT", "garbage", "not a JWT"),
    (
        "deeply nested claims",
        "e30." + base64.urlsafe_b64encode(b"[" * 11000).decode().rstrip("=") + ".c2ln",
        "not a JWT",
    ),
    (
        "huge number",
        "e30." + base64.urlsafe_b64encode(b"1" * 5000).decode().rstrip("=") + ".c2ln",
        "not a JWT",
    ),
    ("huge", "a" * 20_000, "longer than"),
    ("empty", "", "required"),
]


@pytest.mark.parametrize(("token", "needle"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_tokens(token: str, needle: str) -> None:
    with pytest.raises(InvalidJwt) as err:
        validate_jwt_svid(token, "backend", bundles())
    assert needle in err.value.public_message


def test_empty_audience_is_refused() -> None:
    with pytest.raises(InvalidJwt, match="audience is required"):
        validate_jwt_svid(es256(claims()), "", bundles())


def test_jwks_served_holds_jwt_keys_only_and_bad_documents_are_left_out() -> None:
    cert_doc = bundle_document([KEY], sequence=3, refresh_hint=7)
    good = parse_bundle("cluster.local", cert_doc)
    assert good.sequence == 3 and good.refresh_hint is not None
    assert [k["kid"] for k in json.loads(good.jwks)["keys"]] == ["k1"]
    parsed = parse_trust_bundles(
        TrustDomain("cluster.local"),
        {
            "cluster.local": cert_doc,
            "bad-json.example": b"{",
            "no-keys.example": b"{}",
            "bad-x5c.example": b'{"keys":[{"use":"x509-svid","x5c":["!!"]}]}',
            "no-kid.example": b'{"keys":[{"use":"jwt-svid","kty":"EC"}]}',
            "Bad Name": b'{"keys":[]}',
        },
    )
    assert set(parsed.domains) == {"cluster.local"}
    assert parsed.jwt_bundles() == {"spiffe://cluster.local": good.jwks}


def test_refresh_hint_is_the_shortest_of_own_and_federated() -> None:
    """Defect: only the own bundle's hint counted, so a faster-rotating federated domain's
    new keys reached workloads late (end to end: tests/integration/federation/test_foreign_changes.py)."""
    own = bundle_document([KEY], sequence=1, refresh_hint=300)
    fast = bundle_document([new_key("f")], sequence=1, refresh_hint=7)
    silent = json.dumps({"keys": []}).encode()
    td = TrustDomain("cluster.local")
    both = parse_trust_bundles(td, {"cluster.local": own, "fast.example": fast})
    assert both.refresh_hint is not None and both.refresh_hint.total_seconds() == 7
    alone = parse_trust_bundles(td, {"cluster.local": own, "silent.example": silent})
    assert alone.refresh_hint is not None and alone.refresh_hint.total_seconds() == 300
    assert parse_trust_bundles(td, {}).refresh_hint is None
