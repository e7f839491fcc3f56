"""JWT-SVIDs from a real CA process: minted over gRPC/TLS, validated with PyJWT against the
bundle the CA serves, recorded by hash, and signing keys that rotate on a seconds scale."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from tests.support.ca_client import channel
from tests.support.ca_process import RunningCa, start_ca

AUD = "spiffe://cluster.local/ns/demo/sa/backend"


@pytest.fixture
def rotating_ca(tmp_path: Path) -> Iterator[RunningCa]:
    ca = start_ca(
        tmp_path / "data",
        "--jwt-key-active-life", "8s",
        "--jwt-svid-max-ttl", "10s",
        "--jwt-svid-ttl", "10s",
        "--workers", "2",
    )  # fmt: skip
    try:
        yield ca
    finally:
        ca.stop()


def stub(ca: RunningCa) -> identity_pb2_grpc.WorkloadIdentityServiceStub:
    return identity_pb2_grpc.WorkloadIdentityServiceStub(channel(ca.grpc_addr, ca.root_cert_path))


def mint(ca: RunningCa, audience: str = AUD, ttl_s: int = 0) -> identity_pb2.MintJWTSVIDResponse:
    token = ca.mint_token("demo", "frontend")
    request = identity_pb2.MintJWTSVIDRequest(audience=[audience], ttl_seconds=ttl_s)
    response: identity_pb2.MintJWTSVIDResponse = stub(ca).MintJWTSVID(
        request, metadata=[("authorization", f"Bearer {token}")], timeout=10
    )
    return response


def bundle(ca: RunningCa) -> dict[str, Any]:
    token = ca.mint_token("demo", "frontend")
    response = stub(ca).FetchTrustBundles(
        identity_pb2.FetchTrustBundlesRequest(),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=10,
    )
    assert response.trust_domain == "cluster.local"
    doc: dict[str, Any] = json.loads(response.bundles["cluster.local"])
    return doc


def jwt_kids(doc: dict[str, Any]) -> set[str]:
    return {k["kid"] for k in doc["keys"] if k["use"] == "jwt-svid"}


def validate(token: str, doc: dict[str, Any], audience: str = AUD) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    matches = [k for k in doc["keys"] if k.get("kid") == kid]
    if not matches:
        raise jwt.InvalidKeyError(f"kid {kid} is not in the bundle")
    key = jwt.PyJWK.from_dict(matches[0], algorithm="ES256").key
    return jwt.decode(token, key, algorithms=["ES256"], audience=audience)


def test_mint_validate_and_record_by_hash(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "data")
    try:
        response = mint(ca, ttl_s=120)
        doc = bundle(ca)
        claims = validate(response.token, doc)
        assert claims["sub"] == "spiffe://cluster.local/ns/demo/sa/frontend"
        assert claims["exp"] - claims["iat"] == 120
        with pytest.raises(jwt.InvalidAudienceError):
            validate(response.token, doc, "spiffe://cluster.local/ns/demo/sa/other")
        admin = json.loads(
            urllib.request.urlopen(f"{ca.admin_url}/v1/certificates/{claims['jti']}").read()
        )
        assert admin["kind"] == "jwt-svid" and admin["audiences"] == AUD
        assert admin["token_sha256"] == hashlib.sha256(response.token.encode()).hexdigest()
        # The same bundle (with the JWT keys) on the admin API: one builder.
        served = json.loads(
            urllib.request.urlopen(f"{ca.admin_url}/v1/trust-bundle?format=spiffe").read()
        )
        assert jwt_kids(served) == jwt_kids(doc)
        assert served["spiffe_sequence"] == doc["spiffe_sequence"]
        with pytest.raises(grpc.RpcError) as err:
            stub(ca).MintJWTSVID(identity_pb2.MintJWTSVIDRequest(audience=[AUD]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Bytes that are no request: INVALID_ARGUMENT from the deserializer, not UNKNOWN.
        raw = channel(ca.grpc_addr, ca.root_cert_path).unary_unary(
            "/bulwark.v1.WorkloadIdentityService/MintJWTSVID",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        ca.stop()
    record = (tmp_path / "data" / "record.db").read_bytes()
    signature = response.token.rsplit(".", 1)[1].encode()
    assert signature not in record and response.token.encode() not in record
    log = (tmp_path / "data-ca.log").read_text()
    assert "Traceback" not in log
    assert "PRIVATE KEY" not in log and response.token not in log and signature.decode() not in log


@pytest.mark.slow
def test_keys_rotate_new_key_published_before_use_old_tokens_keep_validating(
    rotating_ca: RunningCa,
) -> None:
    ca = rotating_ca
    first_kid = jwt.get_unverified_header(mint(ca).token)["kid"]
    seen_before_use: set[str] = set()
    last_old: identity_pb2.MintJWTSVIDResponse | None = None
    deadline = time.monotonic() + 40
    new_kid = None
    while time.monotonic() < deadline:
        doc = bundle(ca)
        response = mint(ca)
        kid = jwt.get_unverified_header(response.token)["kid"]
        if kid != first_kid:
            new_kid = kid
            break
        seen_before_use |= jwt_kids(doc)
        last_old = response
        time.sleep(0.3)
    assert new_kid is not None and last_old is not None, f"no rotation:\n{ca.log()[-2000:]}"
    assert new_kid in seen_before_use, "the new key signed before any bundle published it"
    # A token minted with the old key just before the switch still validates now (10 s TTL).
    now_doc = bundle(ca)
    assert first_kid in jwt_kids(now_doc)
    validate(last_old.token, now_doc)
    # Once the retired key's last token has expired, it leaves the bundle.
    deadline = time.monotonic() + 40
    while first_kid in jwt_kids(bundle(ca)):
        assert time.monotonic() < deadline, "the retired key was never unpublished"
        time.sleep(0.3)
    assert time.time() >= last_old.expires_at - 1  # not before its tokens expired
    assert new_kid in jwt_kids(bundle(ca))
