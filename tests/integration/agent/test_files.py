"""FILE_MOUNTED_CERTS mode and the file-cert:/file-root: SDS resources, served from watched files.

An xds-protos client stands in for Envoy: these cases check refusals (unreadable files, too many
file resources) by gRPC status and message, which Envoy only logs; tests/envoy/ covers Envoy
itself on `default` and `ROOTCA`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.config import AgentConfig
from agent.endpoints.resources import SECRET_TYPE_URL
from tests.support.agent import (
    NODE,
    SdsStream,
    agent_config,
    leaf_serial,
    make_svid,
    running_agent,
    secrets_of,
)
from tests.support.ca_process import RunningCa


def write_svid_files(
    directory: Path,
    *,
    chain: str = "cert-chain.pem",
    key: str = "key.pem",
    root: str = "root-cert.pem",
) -> str:
    """Write a fresh SVID's files atomically; returns its serial."""
    svid = make_svid(ttl=timedelta(hours=1))
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in ((chain, svid.chain_pem), (key, svid.key_pem), (root, svid.roots.pem)):
        tmp = directory / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
    return svid.serial


async def test_file_mounted_certs_are_served_and_reloaded(work: Path) -> None:
    certs = work / "etc-certs"
    serial = write_svid_files(certs)
    config = AgentConfig(
        namespace="demo",
        service_account="frontend",
        file_mounted_certs=True,
        file_mounted_dir=certs,
        socket_path=work / "sock",
        status_addr="127.0.0.1:0",
        file_poll_interval=timedelta(milliseconds=100),
        ca_addr="127.0.0.1:1",
    )
    async with (
        running_agent(config) as live,
        grpc.aio.insecure_channel(live.socket) as channel,
    ):
        stream = SdsStream(channel)
        await stream.send(node=NODE, resource_names=["default", "ROOTCA"])
        first = await stream.next()
        assert leaf_serial(secrets_of(first)["default"]) == serial
        assert "ROOTCA" in secrets_of(first)
        replaced = write_svid_files(certs)
        pushed = {}
        while "default" not in pushed:
            pushed.update(secrets_of(await stream.next(timeout=10)))
        assert leaf_serial(pushed["default"]) == replaced
        stream.cancel()
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(live.status_url + "/metrics")).text
        # no CA was ever called
        assert 'istio_agent_num_outgoing_requests{request_type="csr"} 0' in metrics


async def test_file_cert_and_file_root_resources(shared_ca: RunningCa, work: Path) -> None:
    files = work / "files"
    serial = write_svid_files(files, chain="c.pem", key="k.pem", root="r.pem")
    cert_name = f"file-cert:{files / 'c.pem'}~{files / 'k.pem'}"
    root_name = f"file-root:{files / 'r.pem'}"
    async with (
        running_agent(agent_config(shared_ca, work)) as live,
        grpc.aio.insecure_channel(live.socket) as channel,
    ):
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        fetched = await stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(
                node=NODE, resource_names=[cert_name, root_name], type_url=SECRET_TYPE_URL
            )
        )
        secrets = secrets_of(fetched)
        assert leaf_serial(secrets[cert_name]) == serial
        assert secrets[root_name].validation_context.trusted_ca.inline_bytes == (
            (files / "r.pem").read_bytes()
        )

        stream = SdsStream(channel)
        await stream.send(node=NODE, resource_names=[cert_name])
        first = await stream.next()
        assert list(secrets_of(first)) == [cert_name]
        await stream.send(resource_names=[cert_name], response_nonce=first.nonce)
        replaced = write_svid_files(files, chain="c.pem", key="k.pem", root="r.pem")
        pushed = await stream.next(timeout=10)
        assert leaf_serial(secrets_of(pushed)[cert_name]) == replaced

        # a key file that stops parsing is counted; the last good secret stays
        (files / "k.pem").write_bytes(b"garbage")
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                text = (await client.get(live.status_url + "/metrics")).text
                if "istio_agent_num_file_secret_failures_total 1" in text:
                    break
                await stream.nothing_within(0.05)
        assert "istio_agent_num_file_secret_failures_total 1" in text
        assert await stream.nothing_within(0.3)
        stream.cancel()

        missing = f"file-root:{work / 'absent.pem'}"
        try:
            await stub.FetchSecrets(
                discovery_pb2.DiscoveryRequest(
                    node=NODE, resource_names=[missing], type_url=SECRET_TYPE_URL
                )
            )
            raise AssertionError("expected UNAVAILABLE")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "cannot read" in (err.details() or "") and "absent.pem" in (err.details() or "")


async def test_file_resources_are_capped(shared_ca: RunningCa, work: Path) -> None:
    from agent.files.secrets import MAX_FILE_RESOURCES

    async with (
        running_agent(agent_config(shared_ca, work)) as live,
        grpc.aio.insecure_channel(live.socket) as channel,
    ):
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        names = [f"file-root:{work / f'r{i}.pem'}" for i in range(MAX_FILE_RESOURCES + 1)]
        try:
            await stub.FetchSecrets(
                discovery_pb2.DiscoveryRequest(
                    node=NODE, resource_names=names, type_url=SECRET_TYPE_URL
                )
            )
            raise AssertionError("expected RESOURCE_EXHAUSTED")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "file resources" in (err.details() or "")
