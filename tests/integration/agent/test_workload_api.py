"""The SPIFFE Workload API on the agent socket, checked with the PyPI `spiffe` client."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.support.agent import LiveAgent, agent_config, running_agent
from tests.support.ca_process import RunningCa


@pytest.fixture
async def live(shared_ca: RunningCa, work: Path) -> AsyncIterator[LiveAgent]:
    async with running_agent(agent_config(shared_ca, work)) as agent:
        yield agent


def endpoint(live: LiveAgent) -> str:
    return f"unix://{os.path.abspath(live.agent.config.socket_path)}"


async def test_workload_api_client_fetches_the_svid_and_bundle(live: LiveAgent) -> None:
    served = live.agent.cache.snapshot.svid
    assert served is not None

    def fetch() -> tuple[str, int, int]:
        client = WorkloadApiClient(socket_path=endpoint(live))
        try:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
            bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            assert bundle is not None
            return str(svid.spiffe_id), svid.leaf.serial_number, len(bundle.x509_authorities)
        finally:
            client.close()

    spiffe_id, serial, roots = await asyncio.to_thread(fetch)
    assert spiffe_id == "spiffe://cluster.local/ns/demo/sa/frontend"
    assert format(serial, "x") == served.serial
    assert roots == 1


async def test_x509_source_sees_the_rotated_svid(live: LiveAgent) -> None:
    source = await asyncio.to_thread(X509Source, socket_path=endpoint(live), timeout_in_seconds=15)
    try:
        first = source.get_x509_context().default_svid.leaf.serial_number
        updated = threading.Event()
        source.subscribe_for_updates(updated.set)
        new = await live.agent.renewer.refresh()
        assert await asyncio.to_thread(updated.wait, 15)
        for _ in range(100):
            if format(source.get_x509_context().default_svid.leaf.serial_number, "x") == new.serial:
                break
            await asyncio.sleep(0.05)
        assert format(source.get_x509_context().default_svid.leaf.serial_number, "x") == new.serial
        assert source.get_x509_context().default_svid.leaf.serial_number != first
        # the key the source holds belongs to the new certificate
        held = source.get_x509_context().default_svid.private_key.public_key()
        certified = source.get_x509_context().default_svid.leaf.public_key()
        assert isinstance(held, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        assert isinstance(certified, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        assert held.public_numbers() == certified.public_numbers()
    finally:
        await asyncio.to_thread(source.close)


async def test_missing_security_header_is_invalid_argument(live: LiveAgent) -> None:
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "workload.spiffe.io" in (err.value.details() or "")
        bundles = stub.FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=(("workload.spiffe.io", "false"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bundles.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_sends_full_state_at_once_and_on_rotation(live: LiveAgent) -> None:
    header = (("workload.spiffe.io", "true"),)
    async with grpc.aio.insecure_channel(live.socket) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=header)
        first = await asyncio.wait_for(call.read(), 10)
        svid = first.svids[0]
        assert svid.spiffe_id == "spiffe://cluster.local/ns/demo/sa/frontend"
        assert svid.x509_svid and svid.x509_svid_key and svid.bundle
        await live.agent.renewer.refresh()
        second = await asyncio.wait_for(call.read(), 10)
        assert second.svids[0].x509_svid != svid.x509_svid
        assert second.svids[0].bundle == svid.bundle
        call.cancel()
