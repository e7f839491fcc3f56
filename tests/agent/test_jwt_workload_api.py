"""The agent's JWT Workload API and federated bundles over its real socket.

The agent runs in-process against the real CA for its certificates; the CA's
`WorkloadIdentityService` is `tests/support/jwt_ca_stub.py` (a test-only
stand-in until the CA serves it), reached over the same TLS address.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from spiffe import JwtSource, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from agent.resources import ROOTCA
from certs.keys import KeyType, generate_key
from certs.pem import load_certificates
from certs.profile import self_signed_root
from certs.spiffe_id import TrustDomain
from tests.agent.agent_process import start_agent_process
from tests.agent.support import NODE, LiveAgent, SdsStream, agent_config, running_agent, secrets_of
from tests.support.ca_process import RunningCa
from tests.support.jwt_ca_stub import Domain, JwtCaStub, new_key, sign_jwt

HEADER = (("workload.spiffe.io", "true"),)
ME = "spiffe://cluster.local/ns/demo/sa/frontend"
FOREIGN = "federated.example"


@pytest.fixture
async def stub(shared_ca: RunningCa) -> AsyncIterator[JwtCaStub]:
    ca = JwtCaStub(shared_ca)
    await ca.start()
    try:
        yield ca
    finally:
        await ca.stop()


@pytest.fixture
async def live(stub: JwtCaStub, shared_ca: RunningCa, work: Path) -> AsyncIterator[LiveAgent]:
    config = agent_config(
        shared_ca, work, ca_addr=stub.addr, trust_bundle_refresh=timedelta(milliseconds=200)
    )
    async with running_agent(config) as agent:
        yield agent


@pytest.fixture
async def api(live: LiveAgent) -> AsyncIterator[workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def foreign_domain() -> Domain:
    now = datetime.now(UTC)
    root = self_signed_root(
        key=generate_key(KeyType.EC_P256), trust_domain=TrustDomain(FOREIGN), now=now
    )
    return Domain(roots=[root], keys=[new_key("foreign-1")])


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def fetch_jwt(api: workload_pb2_grpc.SpiffeWorkloadAPIStub, *audiences: str) -> str:
    response = await api.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=list(audiences)), metadata=HEADER
    )
    assert len(response.svids) == 1 and response.svids[0].spiffe_id == ME
    return str(response.svids[0].svid)


async def refused(call, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


async def test_fetch_jwt_svid_mints_for_the_agent_identity_and_caches_per_audience_set(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, stub: JwtCaStub
) -> None:
    token = await fetch_jwt(api, "backend", "audit")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == ME and sorted(claims["aud"]) == ["audit", "backend"]
    assert jwt.get_unverified_header(token)["kid"] == stub.signing_key.kid
    # the CA call carried the CSR's credentials: the bearer token
    assert len(stub.mint_calls) == 1 and "authorization" in stub.mint_calls[0][1].split(",")
    # same set in another order, with a duplicate: the cached token, no second CA call
    assert await fetch_jwt(api, "audit", "backend", "audit") == token
    assert len(stub.mint_calls) == 1
    other = await fetch_jwt(api, "backend")
    assert other != token and len(stub.mint_calls) == 2


async def test_jwt_svid_is_renewed_at_half_life(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, stub: JwtCaStub
) -> None:
    stub.jwt_ttl = timedelta(seconds=3)
    first = await fetch_jwt(api, "backend")
    assert await fetch_jwt(api, "backend") == first
    await asyncio.sleep(1.7)
    assert await fetch_jwt(api, "backend") != first
    assert len(stub.mint_calls) == 2


async def test_header_rule_on_every_jwt_rpc(api: workload_pb2_grpc.SpiffeWorkloadAPIStub) -> None:
    for metadata in ((), (("workload.spiffe.io", "false"),)):
        details = await refused(
            api.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=metadata)
        )
        assert "workload.spiffe.io" in details
        await refused(
            api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=metadata).read()
        )
        await refused(
            api.ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x"), metadata=metadata
            )
        )


async def test_fetch_jwt_svid_bad_inputs_are_refused_and_the_agent_lives_on(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, live: LiveAgent, stub: JwtCaStub
) -> None:
    def request(**fields):  # type: ignore[no-untyped-def]
        return api.FetchJWTSVID(workload_pb2.JWTSVIDRequest(**fields), metadata=HEADER)

    assert "audience is required" in await refused(request())
    assert "at most 32" in await refused(request(audience=[f"a{i}" for i in range(5000)]))
    assert "longer than 512" in await refused(request(audience=["x" * 100_000]))
    assert "an audience is empty" in await refused(request(audience=["ok", ""]))
    assert "control characters" in await refused(request(audience=["bad\x1b[31m"]))
    assert "spiffe_id" in await refused(request(audience=["a"], spiffe_id="not-an-id"))
    other = "spiffe://cluster.local/ns/demo/sa/admin"
    details = await refused(
        request(audience=["a"], spiffe_id=other), grpc.StatusCode.PERMISSION_DENIED
    )
    assert other in details
    garbage = live.socket
    async with grpc.aio.insecure_channel(garbage) as channel:
        raw = channel.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
        await refused(raw(b"\xff\xff\xff\xff", metadata=HEADER))
    assert stub.mint_calls == []  # nothing reached the CA
    # the own ID, named explicitly, is fine; the agent still answers
    response = await api.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=["a"], spiffe_id=ME), metadata=HEADER
    )
    assert response.svids[0].spiffe_id == ME
    assert not live.task.done()


async def test_jwt_bundles_stream_first_message_at_once_then_every_key_change(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, stub: JwtCaStub
) -> None:
    import json

    call = api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
    first = await asyncio.wait_for(call.read(), 10)
    keys = json.loads(first.bundles["spiffe://cluster.local"])["keys"]
    assert [k["kid"] for k in keys] == ["k1"] and all(k["use"] == "jwt-svid" for k in keys)
    # polls keep happening (every 200 ms) but nothing changed: no message
    calls = stub.bundle_calls
    pending = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({pending}, timeout=0.8)
    assert not done and stub.bundle_calls > calls
    stub.rotate_key("k2")
    second = await asyncio.wait_for(pending, 10)
    kids = [k["kid"] for k in json.loads(second.bundles["spiffe://cluster.local"])["keys"]]
    assert kids == ["k1", "k2"]
    stub.federate(FOREIGN, foreign_domain())
    third = await asyncio.wait_for(call.read(), 10)
    assert set(third.bundles) == {"spiffe://cluster.local", f"spiffe://{FOREIGN}"}
    call.cancel()


async def test_validate_jwt_svid_own_and_federated_tokens(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, stub: JwtCaStub, live: LiveAgent
) -> None:
    def validate(token: str, audience: str):  # type: ignore[no-untyped-def]
        return api.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=HEADER
        )

    token = await fetch_jwt(api, "backend")
    ok = await validate(token, "backend")
    assert ok.spiffe_id == ME and ok.claims["sub"] == ME
    assert list(ok.claims["aud"]) == ["backend"]
    assert "aud does not include" in await refused(validate(token, "somebody-else"))
    # a token of the federated trust domain validates once its bundle is known
    domain = foreign_domain()
    now = int(datetime.now(UTC).timestamp())
    foreign_id = f"spiffe://{FOREIGN}/ns/x/sa/y"
    claims = {"sub": foreign_id, "aud": ["backend"], "exp": now + 60, "iat": now}
    foreign_token = sign_jwt(domain.keys[0], claims)
    assert FOREIGN in await refused(validate(foreign_token, "backend"))
    stub.federate(FOREIGN, domain)
    await until(lambda: live.agent.cache.snapshot.bundles.for_trust_domain(FOREIGN) is not None)  # type: ignore[union-attr]
    assert (await validate(foreign_token, "backend")).spiffe_id == foreign_id
    # signed by a key nobody published, under a published kid: bad signature
    forged = sign_jwt(new_key("k1"), {"sub": ME, "aud": ["backend"], "exp": now + 60})
    assert "signature does not verify" in await refused(validate(forged, "backend"))
    for garbage in ("", "x", "a.b.c", "..", "e30.e30.", "\x00" * 100, "A" * 20_000):
        await refused(validate(garbage, "backend"))
    await refused(validate(token, ""))
    assert not live.task.done()
    assert (await validate(token, "backend")).spiffe_id == ME


async def test_federated_roots_in_x509_svid_bundles_and_sds_rootca(
    api: workload_pb2_grpc.SpiffeWorkloadAPIStub, stub: JwtCaStub, live: LiveAgent
) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    svids = api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
    bundles = api.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
    first = await asyncio.wait_for(svids.read(), 10)
    await until(lambda: live.agent.cache.snapshot.bundles is not None)
    own_bundle = (await asyncio.wait_for(bundles.read(), 10)).bundles
    assert set(own_bundle) == {"spiffe://cluster.local"}
    async with grpc.aio.insecure_channel(live.socket) as channel:
        sds = SdsStream(channel)
        await sds.send(node=NODE, resource_names=[ROOTCA])
        before = secrets_of(await sds.next())[ROOTCA].validation_context.trusted_ca.inline_bytes
        domain = foreign_domain()
        foreign_der = domain.roots[0].public_bytes(Encoding.DER)
        stub.federate(FOREIGN, domain)
        pushed = secrets_of(await sds.next())[ROOTCA].validation_context.trusted_ca.inline_bytes
        roots = load_certificates(pushed)
        assert len(roots) == 2 and load_certificates(before)[0] in roots
        assert domain.roots[0] in roots
        sds.cancel()
    # FetchX509SVID: the same SVID again, now with the federated bundle
    if first.federated_bundles:
        raise AssertionError("no federation configured yet, but federated_bundles were sent")
    second = await asyncio.wait_for(svids.read(), 10)
    assert dict(second.federated_bundles) == {f"spiffe://{FOREIGN}": foreign_der}
    assert second.svids[0].bundle == first.svids[0].bundle  # own bundle: own roots only
    both = (await asyncio.wait_for(bundles.read(), 10)).bundles
    assert both[f"spiffe://{FOREIGN}"] == foreign_der and "spiffe://cluster.local" in both
    svids.cancel()
    bundles.cancel()


async def test_ca_without_the_identity_service(
    shared_ca: RunningCa, stub: JwtCaStub, work: Path
) -> None:
    """A CA that answers UNIMPLEMENTED (Istio's): JWT bundle streams still answer (own trust
    domain, no keys) so go-spiffe's sources return; FetchJWTSVID says what the CA said."""
    stub.serve_identity = False
    config = agent_config(
        shared_ca, work, ca_addr=stub.addr, trust_bundle_refresh=timedelta(milliseconds=200)
    )
    async with running_agent(config) as live, grpc.aio.insecure_channel(live.socket) as channel:
        api = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        call = api.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
        message = await asyncio.wait_for(call.read(), 10)
        assert dict(message.bundles) == {"spiffe://cluster.local": b'{"keys":[]}'}
        call.cancel()
        details = await refused(
            api.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert "UNIMPLEMENTED" in details


async def test_py_spiffe_jwt_source_fetches_and_validates(live: LiveAgent) -> None:
    endpoint = f"unix://{os.path.abspath(live.agent.config.socket_path)}"

    def use_source() -> tuple[str, str, int]:
        source = JwtSource(socket_path=endpoint, timeout_in_seconds=15)
        client = WorkloadApiClient(socket_path=endpoint)
        try:
            svid = source.fetch_svid(audience={"backend"})
            bundle = source.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            assert bundle is not None
            checked = client.validate_jwt_svid(svid.token, "backend")
            return str(svid.spiffe_id), str(checked.spiffe_id), len(bundle.jwt_authorities)
        finally:
            client.close()
            source.close()

    fetched, validated, keys = await asyncio.to_thread(use_source)
    assert fetched == validated == ME and keys == 1


async def test_jwt_rpcs_in_a_real_agent_process_without_python_ssl(
    stub: JwtCaStub, shared_ca: RunningCa, work: Path
) -> None:
    """Defect: PyJWT imports `ssl` (urllib.request), which `python -m agent` blocks to save
    memory, so the first ValidateJWTSVID of a real agent failed with UNKNOWN. The validator
    now stands on `cryptography` alone; the process still maps no libssl afterwards."""
    env = {"CA_ADDR": stub.addr, "BULWARK_TRUST_BUNDLE_REFRESH": "200ms"}
    proc = await asyncio.to_thread(start_agent_process, shared_ca, work, extra_env=env)
    try:
        await asyncio.to_thread(proc.wait_ready)
        async with grpc.aio.insecure_channel(f"unix:{proc.socket}") as channel:
            api = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
            token = await fetch_jwt(api, "backend")
            checked = await api.ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(audience="backend", svid=token),
                metadata=HEADER,
            )
            assert checked.spiffe_id == ME
            await refused(
                api.ValidateJWTSVID(
                    workload_pb2.ValidateJWTSVIDRequest(audience="other", svid=token),
                    metadata=HEADER,
                )
            )
        maps = Path(f"/proc/{proc.process.pid}/maps").read_text()
        assert "libssl" not in maps
        assert proc.process.poll() is None
    finally:
        proc.stop()


async def test_bundles_of_a_ca_in_another_trust_domain_are_not_used(
    shared_ca: RunningCa, work: Path
) -> None:
    """A CA answering for another trust domain: its bundles never reach workloads; validation
    says there are none yet (UNAVAILABLE) instead of trusting them."""
    stub = JwtCaStub(shared_ca, trust_domain="other.example")
    await stub.start()
    config = agent_config(
        shared_ca, work, ca_addr=stub.addr, trust_bundle_refresh=timedelta(milliseconds=100)
    )
    try:
        async with running_agent(config) as live, grpc.aio.insecure_channel(live.socket) as ch:
            await until(lambda: stub.bundle_calls >= 2)
            assert live.agent.cache.snapshot.bundles is None
            api = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
            details = await refused(
                api.ValidateJWTSVID(
                    workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x.y.z"),
                    metadata=HEADER,
                ),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert "no JWT bundles" in details
    finally:
        await stub.stop()
