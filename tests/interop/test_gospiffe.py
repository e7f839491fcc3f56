"""go-spiffe v2 (github.com/spiffe/go-spiffe/v2, pinned in gospiffe/go.mod) against the agent.

`gospiffe-check` (gospiffe/main.go, built by build-gospiffe.sh) runs one
go-spiffe feature per call: `X509Source` with `x509svid.Verify`, `JWTSource`,
`BundleSource` (each must return: they hung while the JWT RPCs were
UNIMPLEMENTED), mTLS with exact-ID authorization between two agents, and a
JWT-SVID minted for A validated at B. The agents run against the real CA for
certificates; the CA's WorkloadIdentityService is the test-only stand-in
`tests/support/jwt_ca_stub.py` until the CA serves it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certs.keys import KeyType, generate_key
from certs.profile import self_signed_root
from certs.spiffe_id import TrustDomain
from tests.agent.support import LiveAgent, agent_config, running_agent, short_dir
from tests.support.ca_process import RunningCa
from tests.support.gobuild import built_binaries
from tests.support.jwt_ca_stub import Domain, JwtCaStub, new_key

HERE = Path(__file__).resolve().parent
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"
FOREIGN = "federated.example"


@pytest.fixture(scope="session")
def gospiffe() -> Path:
    """The gospiffe-check binary ($BULWARK_GOSPIFFE_BIN, else built or reused from the cache)."""
    directory = built_binaries(
        HERE / "build-gospiffe.sh", ("gospiffe-check",), env_var="BULWARK_GOSPIFFE_BIN"
    )
    return directory / "gospiffe-check"


@dataclass
class Run:
    code: int
    out: dict[str, Any]
    err: str


@dataclass
class Mesh:
    stub: JwtCaStub
    frontend: LiveAgent
    backend: LiveAgent
    binary: Path

    async def run(self, agent: LiveAgent, *args: str, timeout: float = 40.0) -> Run:
        socket = str(agent.agent.config.socket_path.resolve())
        proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            args[0],
            "-socket",
            socket,
            *args[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        text = out.decode().strip()
        return Run(proc.returncode, json.loads(text) if proc.returncode == 0 else {}, err.decode())


@pytest.fixture
async def mesh(shared_ca: RunningCa, gospiffe: Path) -> AsyncIterator[Mesh]:
    stub = JwtCaStub(shared_ca)
    await stub.start()
    refresh = timedelta(milliseconds=200)
    try:
        with short_dir() as a, short_dir() as b:
            front = agent_config(shared_ca, a, ca_addr=stub.addr, trust_bundle_refresh=refresh)
            back = agent_config(
                shared_ca,
                b,
                ca_addr=stub.addr,
                trust_bundle_refresh=refresh,
                service_account="backend",
            )
            async with running_agent(front) as frontend, running_agent(back) as backend:
                yield Mesh(stub, frontend, backend, gospiffe)
    finally:
        await stub.stop()


async def test_x509_source_returns_and_the_svid_verifies(mesh: Mesh) -> None:
    run = await mesh.run(mesh.frontend, "x509")
    assert run.code == 0, run.err
    svid = mesh.frontend.agent.cache.snapshot.svid
    assert svid is not None
    assert run.out == {"spiffe_id": FRONTEND, "serial": svid.serial}


async def test_bundle_source_returns_with_own_and_federated_authorities(mesh: Mesh) -> None:
    root = self_signed_root(
        key=generate_key(KeyType.EC_P256), trust_domain=TrustDomain(FOREIGN), now=datetime.now(UTC)
    )
    mesh.stub.federate(FOREIGN, Domain(roots=[root], keys=[new_key("f1"), new_key("f2")]))
    await _until_federated(mesh.frontend)
    run = await mesh.run(mesh.frontend, "bundles", "-td", f"cluster.local,{FOREIGN}")
    assert run.code == 0, run.err
    assert run.out == {
        "cluster.local": {"x509_authorities": 1, "jwt_authorities": 1},
        FOREIGN: {"x509_authorities": 1, "jwt_authorities": 2},
    }


async def test_jwt_svid_minted_for_a_validates_at_b_for_its_audience_only(mesh: Mesh) -> None:
    minted = await mesh.run(mesh.frontend, "jwt", "-audience", "backend")
    assert minted.code == 0, minted.err
    assert minted.out["spiffe_id"] == FRONTEND and minted.out["audience"] == ["backend"]
    token = minted.out["token"]
    ok = await mesh.run(mesh.backend, "validate", "-audience", "backend", "-token", token)
    assert ok.code == 0, ok.err
    assert ok.out == {"local": FRONTEND, "agent": FRONTEND}
    refused = await mesh.run(mesh.backend, "validate", "-audience", "payments", "-token", token)
    assert refused.code == 1 and "audience" in refused.err.lower(), refused.err


async def test_mtls_between_two_agents_with_exact_id_authorization(mesh: Mesh) -> None:
    socket = str(mesh.backend.agent.config.socket_path.resolve())
    server = await asyncio.create_subprocess_exec(
        str(mesh.binary),
        "serve",
        "-socket",
        socket,
        "-allow",
        FRONTEND,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 40)).decode()
        assert line.startswith("listening "), line
        addr = line.split()[1]
        ok = await mesh.run(mesh.frontend, "dial", "-addr", addr, "-expect", BACKEND)
        assert ok.code == 0, ok.err
        assert ok.out == {"answer": f"hello {FRONTEND}"}
        # the client insists on another server identity: refused by go-spiffe's authorizer
        wrong = await mesh.run(
            mesh.frontend, "dial", "-addr", addr, "-expect", "spiffe://cluster.local/ns/demo/sa/x"
        )
        assert wrong.code == 1 and "unexpected ID" in wrong.err, wrong.err
        # the server allows only the frontend: the backend's own SVID is refused
        other = await mesh.run(mesh.backend, "dial", "-addr", addr, "-expect", BACKEND)
        assert other.code == 1, other.out
    finally:
        server.kill()
        await server.wait()


async def _until_federated(agent: LiveAgent) -> None:
    async with asyncio.timeout(10):
        while True:
            bundles = agent.agent.cache.snapshot.bundles
            if bundles is not None and bundles.for_trust_domain(FOREIGN) is not None:
                return
            await asyncio.sleep(0.05)
