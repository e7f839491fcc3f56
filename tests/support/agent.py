"""Test utilities for the agent: in-process agents against a real CA, SDS stream clients, PKI."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.config import AgentConfig
from agent.endpoints.resources import SECRET_TYPE_URL
from agent.runtime import Agent
from agent.state.svid import RootBundle, Svid
from certs.keys import KeyType, generate_key
from certs.pem import load_certificates
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain
from tests.support.ca_process import RunningCa

ISTIOD_SAN = "istiod.istio-system.svc"
NODE = {"id": "sidecar~10.0.0.1~pod.demo~demo.svc.cluster.local"}


@contextmanager
def short_dir() -> Iterator[Path]:
    """A directory under /tmp short enough for unix socket paths (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bwa-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def agent_config(ca: RunningCa, work: Path, **overrides: Any) -> AgentConfig:
    """An agent for ns/demo sa/frontend talking to `ca`, everything under `work`."""
    namespace = overrides.get("namespace", "demo")
    account = overrides.get("service_account", "frontend")
    token = work / f"token-{namespace}-{account}"
    token.write_text(ca.mint_token(namespace, account))
    base: dict[str, Any] = {
        "namespace": namespace,
        "service_account": account,
        "ca_addr": ca.grpc_addr,
        "ca_root_ca": ca.root_cert_path,
        "istiod_san": ISTIOD_SAN,
        "token_path": token,
        "socket_path": work / "sock",
        "status_addr": "127.0.0.1:0",
        "ecc_signature_algorithm": "ECDSA",
        "file_poll_interval": timedelta(milliseconds=100),
    }
    base.update(overrides)
    return AgentConfig(**base)


@dataclasses.dataclass
class LiveAgent:
    """An agent running as a task of the test's event loop."""

    agent: Agent
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def socket(self) -> str:
        return f"unix:{os.path.abspath(self.agent.config.socket_path)}"

    @property
    def status_url(self) -> str:
        assert self.agent.status_addr is not None
        host, port = self.agent.status_addr
        return f"http://{host}:{port}"

    async def wait_for_svid(self, *, not_serial: str = "", timeout: float = 30.0) -> Svid:
        """The SVID once there is one (with a serial other than `not_serial`)."""
        async with asyncio.timeout(timeout):
            while True:
                svid = self.agent.cache.snapshot.svid
                if svid is not None and svid.serial != not_serial:
                    return svid
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 10)


@asynccontextmanager
async def running_agent(config: AgentConfig, *, wait_svid: bool = True) -> AsyncIterator[LiveAgent]:
    stop = asyncio.Event()
    agent = Agent(config)
    task = asyncio.create_task(agent.run(stop))
    live = LiveAgent(agent, stop, task)
    async with asyncio.timeout(10):
        while not (config.socket_path.exists() and (agent.status_addr or not config.status_addr)):
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        if wait_svid:
            await live.wait_for_svid()
        yield live
    finally:
        if not task.done():
            await live.stop()


class SdsStream:
    """One StreamSecrets or DeltaSecrets call; responses land in a queue as they arrive."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool = False) -> None:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        self.call = stub.DeltaSecrets() if delta else stub.StreamSecrets()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.ended: asyncio.Future[grpc.StatusCode] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    break
                self.responses.put_nowait(response)
        except grpc.aio.AioRpcError:
            pass
        finally:
            code = await self.call.code()
            if not self.ended.done():
                self.ended.set_result(code)

    async def send(self, **fields: Any) -> None:
        fields.setdefault("type_url", SECRET_TYPE_URL)
        await self.call.write(discovery_pb2.DiscoveryRequest(**fields))

    async def send_delta(self, **fields: Any) -> None:
        fields.setdefault("type_url", SECRET_TYPE_URL)
        await self.call.write(discovery_pb2.DeltaDiscoveryRequest(**fields))

    async def next(self, timeout: float = 15.0) -> Any:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing_within(self, seconds: float = 0.4) -> bool:
        """True if no response arrives within `seconds` (used to check ACKs get no reply)."""
        try:
            await asyncio.wait_for(self.responses.get(), seconds)
        except TimeoutError:
            return True
        return False

    def cancel(self) -> None:
        self.call.cancel()
        self._reader.cancel()


def secrets_of(response: Any) -> dict[str, secret_pb2.Secret]:
    """Unpack the Secrets of a DiscoveryResponse or DeltaDiscoveryResponse by name."""
    out = {}
    for item in response.resources:
        packed = item.resource if hasattr(item, "resource") and item.HasField("resource") else item
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        out[secret.name] = secret
    return out


def leaf_serial(secret: secret_pb2.Secret) -> str:
    chain = load_certificates(secret.tls_certificate.certificate_chain.inline_bytes)
    return format(chain[0].serial_number, "x")


def make_svid(
    *,
    now: datetime | None = None,
    ttl: timedelta = timedelta(hours=1),
    issued_at: datetime | None = None,
) -> Svid:
    """A throwaway SVID signed by a throwaway root (for unit tests of timing)."""
    now = now or datetime.now(UTC)
    td = TrustDomain("cluster.local")
    root_key = generate_key(KeyType.EC_P256)
    root = self_signed_root(key=root_key, trust_domain=td, now=now)
    key = generate_key(KeyType.EC_P256)
    sid = SpiffeId.for_service_account(td, "demo", "frontend")
    leaf = leaf_certificate(
        spiffe_id=sid,
        public_key=key.public_key(),
        issuer_cert=root,
        issuer_key=root_key,
        now=now,
        ttl=ttl,
    )
    return Svid(
        spiffe_id=sid,
        key=key,
        chain=(leaf, root),
        roots=RootBundle.of([root]),
        issued_at=issued_at or now,
    )
