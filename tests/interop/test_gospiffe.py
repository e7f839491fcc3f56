"""go-spiffe v2 (github.com/spiffe/go-spiffe/v2, pinned in gospiffe/go.mod) across two trust domains.

`gospiffe-check` (gospiffe/main.go, built by build-gospiffe.sh) runs one go-spiffe feature
per call: `X509Source` with `x509svid.Verify`, `JWTSource`, `BundleSource` (each must return:
they hung while the JWT RPCs were UNIMPLEMENTED), mTLS with exact-ID authorization, and a
JWT-SVID minted for A validated at B. Two real CAs of different trust domains (a.test, b.test)
federate through their bundle endpoints (tests/support/federation.py); agent A
(spiffe://a.test/ns/demo/sa/frontend) and agent B (spiffe://b.test/ns/demo/sa/backend) each
ask their own CA. Nothing here is a stand-in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import LiveAgent, agent_config, running_agent, short_dir
from tests.support.federation import (
    A,
    B,
    FederatedPair,
    admin,
    federated_pair,
    jwt_kids,
    spiffe_id,
    until_federated,
)
from tests.support.gobuild import built_binaries

HERE = Path(__file__).resolve().parent
FRONTEND = spiffe_id(A, "frontend")
BACKEND = spiffe_id(B, "backend")


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
    pair: FederatedPair
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


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatedPair]:
    with federated_pair(tmp_path_factory.mktemp("federation")) as cas:
        yield cas


@pytest.fixture
async def mesh(pair: FederatedPair, gospiffe: Path) -> AsyncIterator[Mesh]:
    refresh = timedelta(milliseconds=200)
    with short_dir() as a, short_dir() as b:
        front = agent_config(
            pair.a, a, trust_domain=A, service_account="frontend", trust_bundle_refresh=refresh
        )
        back = agent_config(
            pair.b, b, trust_domain=B, service_account="backend", trust_bundle_refresh=refresh
        )
        async with running_agent(front) as frontend, running_agent(back) as backend:
            await until_federated(frontend, B)
            await until_federated(backend, A)
            yield Mesh(pair, frontend, backend, gospiffe)


async def test_x509_source_returns_and_the_svid_verifies(mesh: Mesh) -> None:
    run = await mesh.run(mesh.frontend, "x509")
    assert run.code == 0, run.err
    svid = mesh.frontend.agent.cache.snapshot.svid
    assert svid is not None
    assert run.out == {"spiffe_id": FRONTEND, "serial": svid.serial}


async def test_bundle_source_returns_with_own_and_federated_authorities(mesh: Mesh) -> None:
    run = await mesh.run(mesh.frontend, "bundles", "-td", f"{A},{B}")
    assert run.code == 0, run.err
    kids = {
        td: jwt_kids(admin(mesh.pair.ca(td), "/v1/trust-bundle?format=spiffe")) for td in (A, B)
    }
    assert run.out == {
        A: {"x509_authorities": 1, "jwt_authorities": len(kids[A])},
        B: {"x509_authorities": 1, "jwt_authorities": len(kids[B])},
    }
    assert all(kids.values())


async def test_jwt_svid_minted_for_a_validates_at_b_for_its_audience_only(mesh: Mesh) -> None:
    """Minted by CA A for A's workload; B's agent and go-spiffe at B check it with a.test's JWT
    keys, which CA B fetched from CA A's bundle endpoint (the initial bundle had none)."""
    minted = await mesh.run(mesh.frontend, "jwt", "-audience", BACKEND)
    assert minted.code == 0, minted.err
    assert minted.out["spiffe_id"] == FRONTEND and minted.out["audience"] == [BACKEND]
    token = minted.out["token"]
    ok = await mesh.run(mesh.backend, "validate", "-audience", BACKEND, "-token", token)
    assert ok.code == 0, ok.err
    assert ok.out == {"local": FRONTEND, "agent": FRONTEND}
    other = spiffe_id(B, "payments")
    refused = await mesh.run(mesh.backend, "validate", "-audience", other, "-token", token)
    assert refused.code == 1 and "audience" in refused.err.lower(), refused.err


@pytest.mark.parametrize("trust", ["x509-source", "bundle-source"])
async def test_mtls_across_trust_domains_with_exact_id_authorization(
    mesh: Mesh, trust: str
) -> None:
    """A (a.test) dials B (b.test), each authorizing exactly the other's foreign ID and
    verifying it with the federated bundle: from the X509Source's bundle set, or from a
    separate `NewBundleSource`."""
    socket = str(mesh.backend.agent.config.socket_path.resolve())
    server = await asyncio.create_subprocess_exec(
        str(mesh.binary),
        "serve",
        "-socket",
        socket,
        "-allow",
        FRONTEND,
        "-trust",
        trust,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 40)).decode()
        assert line.startswith("listening "), line
        addr = line.split()[1]
        ok = await mesh.run(
            mesh.frontend, "dial", "-addr", addr, "-expect", BACKEND, "-trust", trust
        )
        assert ok.code == 0, ok.err
        assert ok.out == {"answer": f"hello {FRONTEND}"}
        # the client insists on another server identity: refused by go-spiffe's authorizer
        wrong = await mesh.run(mesh.frontend, "dial", "-addr", addr, "-expect", spiffe_id(B, "x"))
        assert wrong.code == 1 and "unexpected ID" in wrong.err, wrong.err
        # the server allows only the frontend: the backend's own SVID is refused
        other = await mesh.run(mesh.backend, "dial", "-addr", addr, "-expect", BACKEND)
        assert other.code == 1, other.out
    finally:
        server.kill()
        await server.wait()
