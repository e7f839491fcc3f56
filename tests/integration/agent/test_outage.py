"""CA outage across a rotation, and root bundle changes pushed without a restart.

An xds-protos client stands in for Envoy to see each push exactly (which names, versions,
that nothing else was pushed) and the agent's metrics during the outage; Envoy's view of the
same events (secrets kept through an outage, ROOTCA pushed on a root change) is in tests/envoy/.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from certs.keys import KeyType, generate_key
from certs.pem import load_certificates, to_pem
from certs.profile import self_signed_root
from certs.spiffe_id import TrustDomain
from tests.support.agent import (
    NODE,
    SdsStream,
    agent_config,
    leaf_serial,
    running_agent,
    secrets_of,
)
from tests.support.agent_process import start_agent_process
from tests.support.ca_process import RunningCa, start_ca


async def metrics_text(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(url + "/metrics")).text


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} missing")


@pytest.mark.slow
async def test_ca_outage_across_a_rotation(tmp_path: Path, work: Path) -> None:
    ca = start_ca(tmp_path / "ca")
    try:
        # 20 s certificates renewed at 80% of life: due after ~4 s, still valid for 20 s
        config = agent_config(ca, work, secret_ttl=timedelta(seconds=20), grace_ratio=0.8)
        async with running_agent(config) as live:
            before = live.agent.cache.snapshot.svid
            assert before is not None
            async with grpc.aio.insecure_channel(live.socket) as channel:
                sds = SdsStream(channel)
                await sds.send(node=NODE, resource_names=["default"])
                first = await sds.next()
                await sds.send(resource_names=["default"], response_nonce=first.nonce)
                wl = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
                    workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)
                )
                await wl.read()

                ca.stop()
                async with asyncio.timeout(40):
                    while live.agent.renewer.failures < 3:
                        await asyncio.sleep(0.1)
                # past the renewal time, the CA down: the current certificate is still served
                snapshot = live.agent.cache.snapshot
                assert snapshot.svid is before
                assert datetime.now(UTC) < before.not_after
                assert live.agent.renewer.due > datetime.now(UTC)  # a backed-off retry is pending
                assert "UNAVAILABLE" in snapshot.svid_error
                assert not sds.ended.done() and not wl.done()
                text = await metrics_text(live.status_url)
                assert (
                    value(text, 'istio_agent_num_failed_outgoing_requests{request_type="csr"}') >= 3
                )
                assert value(text, 'istio_agent_num_outgoing_retries{request_type="csr"}') >= 12
                async with httpx.AsyncClient() as client:
                    ready = await client.get(live.status_url + "/healthz/ready")
                assert ready.status_code == 200  # still holding a valid certificate

                clock = asyncio.get_running_loop().time
                restarting = clock()
                ca.restart()  # same ports; returns once the CA serves
                serving = clock()
                push = await sds.next(timeout=30)
                print(
                    f"\nCA restart took {serving - restarting:.1f} s; the agent rotated "
                    f"{clock() - serving:.1f} s after it served again"
                )
                assert leaf_serial(secrets_of(push)["default"]) != before.serial
                wl_update = await asyncio.wait_for(wl.read(), 10)
                assert wl_update.svids[0].x509_svid
                assert not sds.ended.done()
                sds.cancel()
                wl.cancel()
    finally:
        ca.stop()


def failed_csrs(metrics: str) -> float:
    return value(metrics, 'istio_agent_num_failed_outgoing_requests{request_type="csr"}')


RECOVERY_BOUND_S = 5.0


@pytest.mark.slow
async def test_an_outage_longer_than_the_certificate_recovers_within_seconds(
    tmp_path: Path, work: Path
) -> None:
    """A real agent with 10 s certificates; the CA is down until the certificate expired and
    the agent failed six CSRs in a row (its backoff, uncapped, would be 16 s by then). Once
    the CA serves again, SDS and the Workload API carry a fresh certificate within 5 s."""
    ca = start_ca(tmp_path / "ca")
    agent = start_agent_process(
        ca, work, extra_env={"SECRET_TTL": "10s", "SECRET_GRACE_PERIOD_RATIO": "0.8"}
    )
    try:
        agent.wait_ready()
        async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as channel:
            sds = SdsStream(channel)
            await sds.send(node=NODE, resource_names=["default"])
            first = await sds.next()
            before = leaf_serial(secrets_of(first)["default"])
            await sds.send(resource_names=["default"], response_nonce=first.nonce)
            wl = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
                workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)
            )
            await wl.read()

            await asyncio.to_thread(ca.stop)
            down = datetime.now(UTC)
            async with asyncio.timeout(90):  # the certificate expires, then CSRs keep failing
                while datetime.now(UTC) - down < timedelta(seconds=12):
                    await asyncio.sleep(0.2)
                failed = failed_csrs(await metrics_text(agent.status_url))
                while failed_csrs(await metrics_text(agent.status_url)) < max(failed + 1, 6):
                    await asyncio.sleep(0.05)
            async with httpx.AsyncClient() as client:
                ready = await client.get(agent.status_url + "/healthz/ready")
            assert ready.status_code == 503  # nothing valid to serve any more

            clock = asyncio.get_running_loop().time
            await asyncio.to_thread(ca.start, ca.grpc_addr, ca.admin_addr, ca.mtls_addr)
            serving = clock()
            while True:  # an expired certificate's removal may be pushed first
                push = await sds.next(timeout=60)
                fresh = secrets_of(push).get("default")
                if fresh is not None and leaf_serial(fresh) != before:
                    break
            recovered = clock() - serving
            update = await asyncio.wait_for(wl.read(), 60)
            workload_api = clock() - serving
            print(
                f"\noutage of {(datetime.now(UTC) - down).total_seconds():.0f} s with 10 s "
                f"certificates: SDS had a fresh certificate {recovered:.2f} s and the Workload "
                f"API {workload_api:.2f} s after the CA served again"
            )
            assert update.svids[0].x509_svid
            assert recovered <= RECOVERY_BOUND_S, f"recovery took {recovered:.1f} s"
            assert workload_api <= RECOVERY_BOUND_S, f"recovery took {workload_api:.1f} s"
            sds.cancel()
            wl.cancel()
    finally:
        agent.stop()
        ca.stop()


def replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_a_new_root_file_is_pushed_as_rootca(shared_ca: RunningCa, work: Path) -> None:
    root_file = work / "root-cert.pem"
    root_file.write_bytes(shared_ca.root_cert_path.read_bytes())
    async with (
        running_agent(agent_config(shared_ca, work, ca_root_ca=root_file)) as live,
        grpc.aio.insecure_channel(live.socket) as channel,
    ):
        sds = SdsStream(channel)
        await sds.send(node=NODE, resource_names=["ROOTCA"])
        first = await sds.next()
        pem = secrets_of(first)["ROOTCA"].validation_context.trusted_ca.inline_bytes
        assert len(load_certificates(pem)) == 1
        await sds.send(resource_names=["ROOTCA"], response_nonce=first.nonce)
        bundles = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=(("workload.spiffe.io", "true"),)
        )
        initial = await bundles.read()

        new_root = self_signed_root(
            key=generate_key(KeyType.EC_P256),
            trust_domain=TrustDomain("cluster.local"),
            now=datetime.now(UTC),
        )
        replace_file(root_file, root_file.read_bytes() + to_pem(new_root).encode())
        push = await sds.next(timeout=10)
        roots = load_certificates(
            secrets_of(push)["ROOTCA"].validation_context.trusted_ca.inline_bytes
        )
        assert len(roots) == 2 and new_root in roots
        update = await asyncio.wait_for(bundles.read(), 10)
        assert len(update.bundles["spiffe://cluster.local"]) > len(
            initial.bundles["spiffe://cluster.local"]
        )

        # a broken root file is counted and changes nothing
        before = value(
            await metrics_text(live.status_url), "istio_agent_num_file_watcher_failures_total"
        )
        replace_file(root_file, b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        async with asyncio.timeout(10):
            while (
                value(
                    await metrics_text(live.status_url),
                    "istio_agent_num_file_watcher_failures_total",
                )
                == before
            ):
                await asyncio.sleep(0.05)
        assert await sds.nothing_within(0.5)
        assert len(live.agent.cache.snapshot.roots.certs) == 2  # type: ignore[union-attr]
        sds.cancel()
        bundles.cancel()
