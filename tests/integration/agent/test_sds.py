"""SDS conformance against an in-process agent and a real CA, with an xds-protos client.

This client stands in for Envoy on purpose: the cases here are wire behaviour a real Envoy
never produces on demand (a first request without node.id, unknown names, NACKs, stale
nonces, ACK silence, DeltaSecrets' initial_resource_versions, FetchSecrets, wrong type URLs).
A real Envoy over both StreamSecrets and DeltaSecrets is in tests/envoy/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from agent.endpoints.resources import SECRET_TYPE_URL
from tests.support.agent import (
    NODE,
    LiveAgent,
    SdsStream,
    agent_config,
    leaf_serial,
    running_agent,
    secrets_of,
)
from tests.support.ca_process import RunningCa


@pytest.fixture
async def live(shared_ca: RunningCa, work: Path) -> AsyncIterator[LiveAgent]:
    async with running_agent(agent_config(shared_ca, work)) as agent:
        yield agent


async def metric(agent: LiveAgent, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(agent.status_url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_first_request_without_node_id_is_refused(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stream = SdsStream(channel)
        await stream.send(resource_names=["default"])
        code = await asyncio.wait_for(stream.ended, 10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "node.id" in await stream.call.details()


async def test_unknown_resource_name_is_refused_with_the_served_names(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stream = SdsStream(channel)
        await stream.send(node=NODE, resource_names=["spiffe://cluster.local/ns/x/sa/y"])
        assert await asyncio.wait_for(stream.ended, 10) == grpc.StatusCode.INVALID_ARGUMENT
        assert "ROOTCA" in await stream.call.details()


async def test_ack_nack_stale_nonce_and_added_names(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stream = SdsStream(channel)
        await stream.send(node=NODE, resource_names=["default"])
        first = await stream.next()
        assert first.version_info and first.nonce and first.type_url == SECRET_TYPE_URL
        secret = secrets_of(first)["default"]
        assert secret.tls_certificate.private_key.inline_bytes.startswith(b"-----BEGIN PRIVATE KEY")
        assert leaf_serial(secret) == live.agent.cache.snapshot.svid.serial  # type: ignore[union-attr]

        # ACK: same names, matching nonce -> no reply
        await stream.send(
            resource_names=["default"], response_nonce=first.nonce, version_info=first.version_info
        )
        assert await stream.nothing_within()

        # NACK: counted, no reply
        before = await metric(live, "istio_agent_sds_nack_count")
        await stream.send(
            resource_names=["default"],
            response_nonce=first.nonce,
            error_detail=status_pb2.Status(code=3, message="bad secret (test)"),
        )
        assert await stream.nothing_within()
        assert await metric(live, "istio_agent_sds_nack_count") == before + 1

        # stale nonce: ignored even though it names a new resource
        await stream.send(resource_names=["default", "ROOTCA"], response_nonce="not-the-last")
        assert await stream.nothing_within()

        # added name with the right nonce: reply with only the new name, fresh nonce
        await stream.send(resource_names=["default", "ROOTCA"], response_nonce=first.nonce)
        added = await stream.next()
        assert list(secrets_of(added)) == ["ROOTCA"]
        assert added.nonce != first.nonce and added.version_info
        roots = secrets_of(added)["ROOTCA"].validation_context.trusted_ca.inline_bytes
        assert roots == live.agent.cache.snapshot.roots.pem  # type: ignore[union-attr]
        stream.cancel()


async def test_fetch_secrets(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        response = await stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(
                node=NODE, resource_names=["default", "ROOTCA"], type_url=SECRET_TYPE_URL
            )
        )
        assert set(secrets_of(response)) == {"default", "ROOTCA"}
        assert response.version_info and response.nonce
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(node=NODE, resource_names=["x"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(node=NODE))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "resource name" in (err.value.details() or "")


async def test_delta_subscribe_unsubscribe_and_push(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stream = SdsStream(channel, delta=True)
        await stream.send_delta(node=NODE, resource_names_subscribe=["default"])
        first = await stream.next()
        assert [r.name for r in first.resources] == ["default"]
        assert first.resources[0].version and first.nonce and first.system_version_info
        await stream.send_delta(response_nonce=first.nonce)  # ACK
        assert await stream.nothing_within()

        await stream.send_delta(response_nonce=first.nonce, resource_names_subscribe=["ROOTCA"])
        second = await stream.next()
        assert [r.name for r in second.resources] == ["ROOTCA"]

        await stream.send_delta(response_nonce=second.nonce, resource_names_unsubscribe=["ROOTCA"])
        assert await stream.nothing_within()

        old = live.agent.cache.snapshot.svid.serial  # type: ignore[union-attr]
        await live.agent.renewer.refresh()
        push = await stream.next()
        assert [r.name for r in push.resources] == ["default"]  # ROOTCA unsubscribed, unchanged
        assert leaf_serial(secrets_of(push)["default"]) != old
        stream.cancel()


async def test_delta_initial_versions_skip_what_the_client_has(live: LiveAgent) -> None:
    version = live.agent.cache.snapshot.svid.version  # type: ignore[union-attr]
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stream = SdsStream(channel, delta=True)
        await stream.send_delta(
            node=NODE,
            resource_names_subscribe=["default"],
            initial_resource_versions={"default": version},
        )
        assert await stream.nothing_within()
        stream.cancel()


async def test_ten_streams_all_receive_a_rotation(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        streams = [SdsStream(channel) for _ in range(10)]
        for stream in streams:
            await stream.send(node=NODE, resource_names=["default"])
        firsts = [await s.next() for s in streams]
        for stream, first in zip(streams, firsts, strict=True):
            await stream.send(resource_names=["default"], response_nonce=first.nonce)
        old = live.agent.cache.snapshot.svid.serial  # type: ignore[union-attr]

        received: list[float] = []

        async def wait_push(stream: SdsStream) -> str:
            push = await stream.next()
            received.append(time.monotonic())
            return leaf_serial(secrets_of(push)["default"])

        waiters = [asyncio.ensure_future(wait_push(s)) for s in streams]
        new = await live.agent.renewer.refresh()
        installed = time.monotonic()
        serials = await asyncio.gather(*waiters)
        assert serials == [new.serial] * 10 and new.serial != old
        spread_ms = (max(received) - min(installed, *received)) * 1000
        print(f"\nten SDS streams received the rotation within {spread_ms:.1f} ms of it")
        for stream in streams:
            stream.cancel()


async def test_streams_stay_open_and_get_the_secret_once_it_exists(
    shared_ca: RunningCa, work: Path
) -> None:
    # no token file yet: the CA refuses the CSR, the stream must wait, not close
    config = agent_config(shared_ca, work, token_path=work / "late-token")
    async with (
        running_agent(config, wait_svid=False) as live,
        grpc.aio.insecure_channel(live.socket) as channel,
    ):
        stream = SdsStream(channel)
        await stream.send(node=NODE, resource_names=["default"])
        assert await stream.nothing_within(1.0)
        assert not stream.ended.done()
        async with httpx.AsyncClient() as client:
            ready = await client.get(live.status_url + "/healthz/ready")
        assert ready.status_code == 503 and "UNAUTHENTICATED" in ready.text
        (work / "late-token").write_text(shared_ca.mint_token("demo", "frontend"))
        pushed = await stream.next(timeout=30)
        assert "default" in secrets_of(pushed)
        stream.cancel()


async def test_wrong_type_url_is_refused(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stream = SdsStream(channel)
        await stream.send(
            node=NODE,
            resource_names=["default"],
            type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
        )
        assert await asyncio.wait_for(stream.ended, 10) == grpc.StatusCode.INVALID_ARGUMENT
        assert "type_url" in await stream.call.details()


async def test_status_routes(live: LiveAgent) -> None:
    async with httpx.AsyncClient(base_url=live.status_url) as client:
        assert (await client.get("/healthz/ready")).status_code == 200
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/metrics")).status_code == 405
        debug = (await client.get("/debug/certs")).json()
    svid = live.agent.cache.snapshot.svid
    assert svid is not None
    assert debug["default"]["serial"] == svid.serial
    assert debug["default"]["chain"][0]["uri_sans"] == [str(svid.spiffe_id)]
    assert "PRIVATE KEY" not in str(debug)
