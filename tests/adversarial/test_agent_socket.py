"""Adversarial table for the agent's socket: what any local process that can connect may try.

One real agent process (against a real CA) takes every row. Each row asserts the
exact gRPC status and what the agent must not do; after every row the agent is
alive and ready. At the end its resident memory is bounded and its log, collected
across the whole table, holds no traceback and no line a client forged (#12 agent
socket items, #12.6, #12.10, #13.6's agent side).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.endpoints.resources import SECRET_TYPE_URL
from agent.endpoints.workload_proto import workload_pb2
from agent.files.secrets import MAX_FILE_RESOURCES, MAX_FILE_RESOURCES_PER_STREAM
from tests.integration.agent.test_files import write_svid_files
from tests.support.agent import NODE, short_dir
from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.ca_process import start_ca

SDS = "/envoy.service.secret.v3.SecretDiscoveryService/"
WL = "/SpiffeWorkloadAPI/"
HEADER = (("workload.spiffe.io", "true"),)
GARBAGE = b"\xff" * 11  # an unterminated varint tag: not protobuf of any message
FORGED = "FORGED-LINE"
RSS_LIMIT_KB = 200 * 1024  # the agent idles near 56 MB; /dev/zero used to take it to 23 GB
C = grpc.StatusCode


@dataclass
class Target:
    agent: AgentProcess
    work: Path
    files: Path


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    ca = start_ca(tmp_path_factory.mktemp("adv-ca") / "ca")
    try:
        with short_dir() as work:
            files = work / "files"
            write_svid_files(files, chain="c.pem", key="k.pem", root="r.pem")
            os.mkfifo(files / "fifo")
            (files / "zero-link").symlink_to("/dev/zero")
            with open(files / "big.pem", "wb") as big:
                big.truncate(2 << 20)  # sparse: 2 MiB of nothing, over the 1 MiB cap
            agent = start_agent_process(
                ca,
                work,
                extra_env={"BULWARK_LOG_LEVEL": "debug"},
                args=("--file-poll-interval", "200ms"),
            )
            agent.wait_ready()
            try:
                yield Target(agent, work, files)
            finally:
                assert agent.stop() == 0, agent.log()
                _check_log(agent.log())
    finally:
        ca.stop()


def _check_log(log: str) -> None:
    assert "Traceback" not in log, log[-4000:]
    for line in log.splitlines():
        assert not line.startswith(FORGED), f"a client forged a log line: {line!r}"


async def _fetch(
    channel: grpc.aio.Channel, *names: str, type_url: str = SECRET_TYPE_URL
) -> discovery_pb2.DiscoveryResponse:
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    request = discovery_pb2.DiscoveryRequest(
        node=NODE, resource_names=list(names), type_url=type_url
    )
    return await stub.FetchSecrets(request, timeout=15)


async def _raw_unary(
    channel: grpc.aio.Channel, path: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()
) -> object:
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return await call(body, metadata=headers, timeout=10)


async def _raw_unary_stream(
    channel: grpc.aio.Channel, path: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()
) -> None:
    call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
        body, metadata=headers, timeout=10
    )
    async for _ in call:
        pass


async def _raw_stream(channel: grpc.aio.Channel, path: str, body: bytes) -> None:
    call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
        timeout=10
    )
    await call.write(body)
    async for _ in call:
        pass


async def _sds_stream(channel: grpc.aio.Channel, *requests: discovery_pb2.DiscoveryRequest) -> None:
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)

    async def feed() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        for request in requests:
            yield request
        await asyncio.sleep(30)

    async for _ in stub.StreamSecrets(feed(), timeout=10):
        pass


def req(
    *names: str, node: dict[str, str] | None = None, **kw: object
) -> discovery_pb2.DiscoveryRequest:
    fields: dict[str, object] = {"type_url": SECRET_TYPE_URL, **kw}
    return discovery_pb2.DiscoveryRequest(
        node=NODE if node is None else node, resource_names=list(names), **fields
    )


Case = Callable[[grpc.aio.Channel, Target], Awaitable[object]]


def root(path: Path | str) -> str:
    return f"file-root:{path}"


CASES: dict[str, tuple[Case, grpc.StatusCode, str]] = {
    # file resources: only regular files, bounded, never blocking the loop
    "dev-zero": (lambda ch, t: _fetch(ch, root("/dev/zero")), C.UNAVAILABLE, "not a regular file"),
    "symlink-to-dev-zero": (
        lambda ch, t: _fetch(ch, root(t.files / "zero-link")),
        C.UNAVAILABLE,
        "not a regular file",
    ),
    "fifo": (lambda ch, t: _fetch(ch, root(t.files / "fifo")), C.UNAVAILABLE, "not a regular file"),
    "fifo-as-key": (
        lambda ch, t: _fetch(ch, f"file-cert:{t.files / 'c.pem'}~{t.files / 'fifo'}"),
        C.UNAVAILABLE,
        "not a regular file",
    ),
    "oversized-file": (
        lambda ch, t: _fetch(ch, root(t.files / "big.pem")),
        C.UNAVAILABLE,
        "larger than 1048576 bytes",
    ),
    "directory": (lambda ch, t: _fetch(ch, root("/")), C.UNAVAILABLE, "not a regular file"),
    "proc-environ": (
        lambda ch, t: _fetch(ch, root("/proc/self/environ")),
        C.UNAVAILABLE,
        "file-root:/proc/self/environ",
    ),
    "missing-file": (
        lambda ch, t: _fetch(ch, root(t.work / "absent.pem")),
        C.UNAVAILABLE,
        "does not exist",
    ),
    "not-pem": (lambda ch, t: _fetch(ch, root(t.agent.log_path)), C.UNAVAILABLE, "file-root:"),
    "nul-in-path": (lambda ch, t: _fetch(ch, root("/etc/\x00passwd")), C.INVALID_ARGUMENT, "NUL"),
    "newline-in-path": (
        lambda ch, t: _fetch(ch, root(f"/nonexistent\n{FORGED} x")),
        C.UNAVAILABLE,
        "does not exist",
    ),
    "file-cert-without-key": (
        lambda ch, t: _fetch(ch, f"file-cert:{t.files / 'c.pem'}"),
        C.INVALID_ARGUMENT,
        "file-cert:<cert path>~<key path>",
    ),
    "file-cert-empty-parts": (lambda ch, t: _fetch(ch, "file-cert:~"), C.INVALID_ARGUMENT, "~"),
    "file-root-empty": (
        lambda ch, t: _fetch(ch, "file-root:"),
        C.INVALID_ARGUMENT,
        "file-root:<path>",
    ),
    "unknown-name": (
        lambda ch, t: _fetch(ch, "kube-system/admin"),
        C.INVALID_ARGUMENT,
        "unknown resource",
    ),
    "huge-name": (
        lambda ch, t: _fetch(ch, root("/" + "a" * 100_000)),
        C.INVALID_ARGUMENT,
        "too long",
    ),
    "too-many-in-one-fetch": (
        lambda ch, t: _fetch(
            ch, *(root(t.work / f"n{i}.pem") for i in range(MAX_FILE_RESOURCES_PER_STREAM + 1))
        ),
        C.RESOURCE_EXHAUSTED,
        "file resources",
    ),
    "no-names": (lambda ch, t: _fetch(ch), C.INVALID_ARGUMENT, "at least one resource name"),
    "wrong-type-url": (
        lambda ch, t: _fetch(
            ch, "default", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"
        ),
        C.INVALID_ARGUMENT,
        "type_url",
    ),
    # garbage on the wire: INVALID_ARGUMENT with a short message, never a traceback
    "garbage-fetch": (
        lambda ch, t: _raw_unary(ch, SDS + "FetchSecrets", GARBAGE),
        C.INVALID_ARGUMENT,
        "not a valid DiscoveryRequest",
    ),
    "garbage-stream": (
        lambda ch, t: _raw_stream(ch, SDS + "StreamSecrets", GARBAGE),
        C.INVALID_ARGUMENT,
        "not a valid DiscoveryRequest",
    ),
    "garbage-delta": (
        lambda ch, t: _raw_stream(ch, SDS + "DeltaSecrets", GARBAGE),
        C.INVALID_ARGUMENT,
        "not a valid DeltaDiscoveryRequest",
    ),
    "garbage-x509-svid": (
        lambda ch, t: _raw_unary_stream(ch, WL + "FetchX509SVID", GARBAGE, HEADER),
        C.INVALID_ARGUMENT,
        "not a valid X509SVIDRequest",
    ),
    "garbage-x509-bundles": (
        lambda ch, t: _raw_unary_stream(ch, WL + "FetchX509Bundles", GARBAGE, HEADER),
        C.INVALID_ARGUMENT,
        "not a valid X509BundlesRequest",
    ),
    "garbage-jwt-bundles": (
        lambda ch, t: _raw_unary_stream(ch, WL + "FetchJWTBundles", GARBAGE, HEADER),
        C.INVALID_ARGUMENT,
        "not a valid JWTBundlesRequest",
    ),
    "garbage-jwt-svid": (
        lambda ch, t: _raw_unary(ch, WL + "FetchJWTSVID", GARBAGE, HEADER),
        C.INVALID_ARGUMENT,
        "not a valid JWTSVIDRequest",
    ),
    "garbage-validate-jwt": (
        lambda ch, t: _raw_unary(ch, WL + "ValidateJWTSVID", GARBAGE, HEADER),
        C.INVALID_ARGUMENT,
        "not a valid ValidateJWTSVIDRequest",
    ),
    "workload-api-without-header": (
        lambda ch, t: _raw_unary_stream(
            ch, WL + "FetchX509SVID", workload_pb2().X509SVIDRequest().SerializeToString()
        ),
        C.INVALID_ARGUMENT,
        "workload.spiffe.io",
    ),
    "unknown-method": (
        lambda ch, t: _raw_unary(ch, WL + "FetchEverything", b"", HEADER),
        C.UNIMPLEMENTED,
        "",
    ),
    "unknown-service": (
        lambda ch, t: _raw_unary(
            ch, "/istio.v1.auth.IstioCertificateService/CreateCertificate", b""
        ),
        C.UNIMPLEMENTED,
        "",
    ),
    # streams
    "stream-without-node-id": (
        lambda ch, t: _sds_stream(ch, req("default", node={})),
        C.INVALID_ARGUMENT,
        "node.id",
    ),
    "stream-too-many-files": (
        lambda ch, t: _sds_stream(
            ch, req(*(root(t.work / f"s{i}.pem") for i in range(MAX_FILE_RESOURCES_PER_STREAM + 1)))
        ),
        C.RESOURCE_EXHAUSTED,
        "file resources",
    ),
    "stream-unknown-name-after-valid": (
        lambda ch, t: _sds_stream(ch, req("default"), req("default", "../../etc/shadow")),
        C.INVALID_ARGUMENT,
        "unknown resource",
    ),
    "stream-wrong-type-url": (
        lambda ch, t: _sds_stream(ch, req("default", type_url="x")),
        C.INVALID_ARGUMENT,
        "type_url",
    ),
}


async def _ready(agent: AgentProcess) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(agent.status_url + "/healthz/ready", timeout=5)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", list(CASES))
async def test_agent_refuses(name: str, target: Target) -> None:
    """Each row: the exact status, a message saying what was wrong, the agent alive and ready."""
    case, code, fragment = CASES[name]
    started = time.monotonic()
    async with grpc.aio.insecure_channel(f"unix:{target.agent.socket}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await case(channel, target)
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    assert fragment in details
    assert "\n" not in details and "Traceback" not in details
    assert "BULWARK_TOKEN_PATH=" not in details  # /proc/self/environ is never echoed
    assert time.monotonic() - started < 8, "a refusal must not wait on the file it names"
    assert target.agent.process.poll() is None, target.agent.log()
    await _ready(target.agent)


async def test_nack_with_newlines_cannot_forge_a_log_line(target: Target) -> None:
    """#12: a NACK's error_detail.message with a newline wrote a forged line into the log."""
    async with grpc.aio.insecure_channel(f"unix:{target.agent.socket}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        await queue.put(req("default"))

        async def feed() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await queue.get()

        call = stub.StreamSecrets(feed())
        first = await call.read()
        nack = req("default", response_nonce=first.nonce)
        nack.error_detail.code = 3
        nack.error_detail.message = f"bad\n{FORGED} ERROR root: certificate of kube-system\r\x1b[2J"
        await queue.put(nack)
        deadline = time.monotonic() + 10
        while "NACK" not in target.agent.log() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        call.cancel()
    log = target.agent.log()
    nack_lines = [line for line in log.splitlines() if "NACK" in line]
    assert nack_lines and f"bad\\n{FORGED}" in nack_lines[-1]
    assert "\\x1b[2J" in nack_lines[-1]
    _check_log(log)


async def test_a_nack_flood_does_not_flood_the_log(target: Target) -> None:
    """#12.6: every NACK was logged; a client looping on NACKs could fill the disk."""
    before = target.agent.log().count("NACK")
    async with grpc.aio.insecure_channel(f"unix:{target.agent.socket}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        await queue.put(req("default"))

        async def feed() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await queue.get()

        call = stub.StreamSecrets(feed())
        first = await call.read()
        for _ in range(300):
            nack = req("default", response_nonce=first.nonce)
            nack.error_detail.message = "flood"
            await queue.put(nack)
        while not queue.empty():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        call.cancel()
    logged = target.agent.log().count("NACK") - before
    assert 1 <= logged <= 40, logged


async def test_nonexistent_fetches_do_not_use_up_the_watch_slots(target: Target) -> None:
    """#12: 70 fetches of nonexistent paths used the 64 file-watch slots for the agent's life."""
    async with grpc.aio.insecure_channel(f"unix:{target.agent.socket}") as channel:
        for i in range(MAX_FILE_RESOURCES + 6):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _fetch(channel, root(target.work / f"never-{i}.pem"))
            assert caught.value.code() == C.UNAVAILABLE
        streams = []
        for i in range(MAX_FILE_RESOURCES // 4):  # streams that end release their slots too
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            call = stub.StreamSecrets(
                iter([req(*(root(target.work / f"st{i}-{j}") for j in range(4)))])
            )
            streams.append(call)
        await asyncio.sleep(0.5)
        for call in streams:
            call.cancel()
        await asyncio.sleep(0.5)
        fetched = await _fetch(channel, root(target.files / "r.pem"))
    assert len(fetched.resources) == 1


async def test_a_fifo_does_not_stall_sds_for_others(target: Target) -> None:
    """#12: a FIFO named in file-root: blocked the event loop until someone wrote to it."""
    async with grpc.aio.insecure_channel(f"unix:{target.agent.socket}") as channel:
        blocked = asyncio.ensure_future(_fetch(channel, root(target.files / "fifo")))
        started = time.monotonic()
        fetched = await _fetch(channel, "default")
        assert time.monotonic() - started < 3
        assert len(fetched.resources) == 1
        with pytest.raises(grpc.aio.AioRpcError):
            await blocked


def test_memory_stays_bounded(target: Target) -> None:
    """#12: /dev/zero grew the agent to 23 GB; after the whole table it stays small."""
    rss = target.agent.memory_kb()["VmRSS"]
    assert rss < RSS_LIMIT_KB, f"agent RSS {rss} kB"
