"""MintJWTSVID and FetchTrustBundles, row by row, in-process against the worker's servicer.

The servicer is built by the worker's own wiring (`ca_server.assembly.identity_service`, the
same `Authentication` as CreateCertificate) over a real key file made by the supervisor's
`SpiffeServices.prepare`. Every refusal carries its code and a message, records nothing,
is counted and never echoes the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from prometheus_client import CollectorRegistry

from ca_server.assembly import identity_service
from ca_server.authn.plan import build_authentication
from ca_server.config import CaConfig
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import JWT_SVID
from ca_server.spiffe.jwtsvid.service import Undecodable, WorkloadIdentityService
from ca_server.spiffe.services import SpiffeServices
from protos.bulwark.v1 import identity_pb2
from tests.support.testca import Aborted, FakeContext, MemoryRecorder, TestCa

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"


@dataclass
class JwtCa:
    base: TestCa
    service: WorkloadIdentityService
    recorder: MemoryRecorder
    registry: CollectorRegistry

    def refusals(self) -> float:
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == "bulwark_ca_refusals_total":
                    total += sample.value
        return total

    async def mint(
        self,
        audience: list[str] | None = None,
        *,
        ttl_s: int = 0,
        token: str | None = None,
        chain: bytes | None = None,
        request: Any = None,
    ) -> identity_pb2.MintJWTSVIDResponse:
        md = [("authorization", f"Bearer {token}")] if token else []
        context = FakeContext(metadata=md, client_chain_pem=chain)
        if request is None:
            request = identity_pb2.MintJWTSVIDRequest(
                audience=["spiffe://cluster.local/ns/demo/sa/backend"]
                if audience is None
                else audience,
                ttl_seconds=ttl_s,
            )
        return await self.service.MintJWTSVID(request, context)

    async def bundles(self, token: str | None) -> identity_pb2.FetchTrustBundlesResponse:
        md = [("authorization", f"Bearer {token}")] if token else []
        request = identity_pb2.FetchTrustBundlesRequest()
        return await self.service.FetchTrustBundles(request, FakeContext(metadata=md))


def make_jwt_ca(base: TestCa, *, keys: bool = True, **config: Any) -> JwtCa:
    cfg = CaConfig(data_dir=base.config.data_dir, workers=1, **config)
    if keys:
        SpiffeServices(cfg, lambda: base.material).prepare()
    registry = CollectorRegistry()
    recorder = MemoryRecorder()
    service = identity_service(
        cfg,
        lambda: base.material,
        authentication=build_authentication(cfg, lambda: base.material),
        recorder=recorder,
        metrics=CaMetrics(registry),
        events=CaEventLog(logging.getLogger("ca_server.events")),
    )
    return JwtCa(base=base, service=service, recorder=recorder, registry=registry)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(
        tmp_path_factory.mktemp("jwtca"), trusted_node_accounts=("istio-system/ztunnel",)
    )


@pytest.fixture
def ca(base: TestCa) -> JwtCa:
    return make_jwt_ca(base, trusted_node_accounts=("istio-system/ztunnel",))


def validate(ca: JwtCa, token: str, audience: str) -> dict[str, Any]:
    """Validate `token` with PyJWT against the jwt-svid keys of the CA's own bundle."""
    response = asyncio.run(ca.bundles(ca.base.mint()))
    doc = json.loads(response.bundles["cluster.local"])
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in doc["keys"] if k.get("kid") == kid and k["use"] == "jwt-svid"]
    key = jwt.PyJWK.from_dict(jwk, algorithm="ES256")
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience)


REFUSALS = [
    ("no-credential", dict(token=None), grpc.StatusCode.UNAUTHENTICATED, "credential"),
    ("forged-token", dict(token="forge"), grpc.StatusCode.UNAUTHENTICATED, ""),
    ("no-audience", dict(audience=[]), grpc.StatusCode.INVALID_ARGUMENT, "audience is required"),
    ("empty-audience", dict(audience=[""]), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("too-many", dict(audience=[f"a{i}" for i in range(17)]), grpc.StatusCode.INVALID_ARGUMENT, "at most 16"),
    ("too-long", dict(audience=["a" * 256]), grpc.StatusCode.INVALID_ARGUMENT, "longer than 255"),
    ("space", dict(audience=["two words"]), grpc.StatusCode.INVALID_ARGUMENT, "printable ASCII"),
    ("control", dict(audience=["aud\x1b[31m"]), grpc.StatusCode.INVALID_ARGUMENT, "printable ASCII"),
    ("non-ascii", dict(audience=["añd"]), grpc.StatusCode.INVALID_ARGUMENT, "printable ASCII"),
    ("comma", dict(audience=["a,b"]), grpc.StatusCode.INVALID_ARGUMENT, "comma"),
    ("undecodable", dict(request=Undecodable("request is not a valid MintJWTSVIDRequest")), grpc.StatusCode.INVALID_ARGUMENT, "not a valid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kwargs", "code", "words"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusal_records_nothing_and_is_counted(
    ca: JwtCa, name: str, kwargs: dict[str, Any], code: grpc.StatusCode, words: str
) -> None:
    kwargs = dict(kwargs)
    if kwargs.get("token", "") == "forge":
        kwargs["token"] = ca.base.forge.alg_none({"sub": "system:serviceaccount:demo:frontend"})
    elif "token" not in kwargs:
        kwargs["token"] = ca.base.mint()
    with pytest.raises(Aborted) as err:
        asyncio.run(ca.mint(**kwargs))
    assert err.value.code == code, err.value.details
    assert words.lower() in err.value.details.lower()
    if kwargs.get("token"):
        assert kwargs["token"] not in err.value.details
    assert ca.recorder.entries == []
    assert ca.refusals() == 1


def test_mints_a_jwt_svid_for_the_caller_and_records_its_hash(ca: JwtCa) -> None:
    response = asyncio.run(ca.mint(["backend", "spiffe://other/x"], token=ca.base.mint()))
    header = jwt.get_unverified_header(response.token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT" and header["kid"]
    claims = validate(ca, response.token, "backend")
    assert claims["sub"] == FRONTEND == response.spiffe_id
    assert claims["aud"] == ["backend", "spiffe://other/x"]
    assert claims["exp"] - claims["iat"] == 300  # the default TTL
    assert response.expires_at == claims["exp"]
    (entry,) = ca.recorder.entries
    assert entry.kind == JWT_SVID and entry.audiences == "backend,spiffe://other/x"
    assert entry.token_sha256 == hashlib.sha256(response.token.encode()).hexdigest()
    assert entry.key_id == header["kid"] and entry.serial == claims["jti"]
    assert response.token not in repr(entry)
    with pytest.raises(jwt.InvalidAudienceError):
        validate(ca, response.token, "someone-else")


@pytest.mark.parametrize(
    ("ttl_s", "lifetime"),
    [(0, 300), (-5, 300), (30, 30), (3600, 3600), (10 * 3600, 3600), (2**63 - 1, 3600)],
)
def test_ttl_default_and_cap(ca: JwtCa, ttl_s: int, lifetime: int) -> None:
    """The int64 maximum once overflowed timedelta: INTERNAL for a request's value."""
    response = asyncio.run(ca.mint(ttl_s=ttl_s, token=ca.base.mint()))
    claims = jwt.decode(response.token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == lifetime


def test_max_ttl_is_configurable(base: TestCa) -> None:
    ca = make_jwt_ca(
        base, jwt_svid_default_ttl=timedelta(seconds=20), jwt_svid_max_ttl=timedelta(seconds=60)
    )
    claims = jwt.decode(
        asyncio.run(ca.mint(ttl_s=600, token=base.mint())).token,
        options={"verify_signature": False},
    )
    assert claims["exp"] - claims["iat"] == 60


def test_a_trusted_node_account_gets_its_own_identity_only(ca: JwtCa) -> None:
    """Strict identity: even an account allowed to impersonate for X.509 has no way to
    name another identity here; its JWT-SVID names itself."""
    token = ca.base.mint("istio-system", "ztunnel")
    response = asyncio.run(ca.mint(token=token))
    assert response.spiffe_id == "spiffe://cluster.local/ns/istio-system/sa/ztunnel"


def test_client_certificate_authenticates_as_for_create_certificate(ca: JwtCa) -> None:
    chain = ca.base.client_chain("spiffe://cluster.local/ns/demo/sa/backend")
    response = asyncio.run(ca.mint(chain=chain))
    assert response.spiffe_id == "spiffe://cluster.local/ns/demo/sa/backend"


def test_record_failure_sends_no_token(ca: JwtCa) -> None:
    ca.recorder.failing = True
    with pytest.raises(Aborted) as err:
        asyncio.run(ca.mint(token=ca.base.mint()))
    assert err.value.code == grpc.StatusCode.INTERNAL
    assert ca.refusals() == 1


def test_no_active_key_is_unavailable(tmp_path: Path) -> None:
    ca = make_jwt_ca(TestCa.create(tmp_path), keys=False)
    with pytest.raises(Aborted) as err:
        asyncio.run(ca.mint(token=ca.base.mint()))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert ca.recorder.entries == []


def test_fetch_trust_bundles_needs_a_credential_and_holds_roots_and_jwt_keys(ca: JwtCa) -> None:
    with pytest.raises(Aborted) as err:
        asyncio.run(ca.bundles(None))
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    response = asyncio.run(ca.bundles(ca.base.mint()))
    assert response.trust_domain == "cluster.local"
    doc = json.loads(response.bundles["cluster.local"])
    uses = sorted(k["use"] for k in doc["keys"])
    assert uses == ["jwt-svid", "x509-svid"]
    assert doc["spiffe_sequence"] >= 1 and doc["spiffe_refresh_hint"] > 0
