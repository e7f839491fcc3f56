"""Two real Bulwark CAs of different trust domains, federated through their bundle endpoints.

The flags are exactly those docs/FEDERATION.md walks through:

    a.test: --trust-domain a.test --bundle-endpoint-addr 127.0.0.1:PA
            --federate-with b.test=https://127.0.0.1:PB/,bundle=b-initial.json
    b.test: --trust-domain b.test --bundle-endpoint-addr 127.0.0.1:PB
            --federate-with a.test=https://127.0.0.1:PA/,bundle=a-initial.json

(profile `https_spiffe`, the default: each endpoint presents the CA's own
`spiffe://<td>/bulwark/bundle-endpoint` SVID, checked against the initial bundle's roots).
Each initial bundle holds the other CA's X.509 root only (from its admin API, what an operator
copies out of band); the JWT keys arrive only through the bundle endpoint, so a JWT-SVID of one
domain validating in the other proves the fetch worked. Used by tests/federation (make test)
and tests/interop/test_gospiffe.py (make test-interop, go-spiffe).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.agent import LiveAgent
from tests.support.ca_process import RunningCa
from tests.support.ports import free_port

A, B = "a.test", "b.test"
NAMESPACE = "demo"


def spiffe_id(trust_domain: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{NAMESPACE}/sa/{service_account}"


def admin(ca: RunningCa, path: str) -> Any:
    with urllib.request.urlopen(f"{ca.admin_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def jwt_kids(doc: dict[str, Any]) -> set[str]:
    return {k["kid"] for k in doc.get("keys", []) if k.get("use") == "jwt-svid"}


def initial_bundle(ca: RunningCa, path: Path) -> Path:
    """`ca`'s bundle with its X.509 roots only: what the other side starts from."""
    doc = admin(ca, "/v1/trust-bundle?format=spiffe")
    doc["keys"] = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    path.write_text(json.dumps(doc))
    return path


@dataclass
class FederatedPair:
    a: RunningCa
    b: RunningCa
    ports: dict[str, int]

    def ca(self, trust_domain: str) -> RunningCa:
        return self.a if trust_domain == A else self.b


def _start(
    data: Path, td: str, port: int, *federate: str, extra: tuple[str, ...] = ()
) -> RunningCa:
    args = ["--trust-domain", td, "--bundle-endpoint-addr", f"127.0.0.1:{port}", "--workers", "1"]
    for value in federate:
        args += ["--federate-with", value]
    return RunningCa(data_dir=data, args=(*args, *extra), env={}).start()


def _federated(ca: RunningCa, other: RunningCa, td: str) -> bool:
    """`ca` holds a bundle of `td` with `other`'s JWT keys: fetched from its endpoint."""
    kept = admin(ca, "/v1/federated-bundles").get(td)
    return kept is not None and bool(
        jwt_kids(kept) & jwt_kids(admin(other, "/v1/trust-bundle?format=spiffe"))
    )


@contextmanager
def federated_pair(
    work: Path, *, a_flags: tuple[str, ...] = (), timeout: float = 30.0
) -> Iterator[FederatedPair]:
    """A (a.test, with `a_flags` besides) and B (b.test), each federating with the other;
    yields once both fetched.

    A's root exists only once A ran, and B's likewise, so A starts alone first and is
    restarted (same data dir and port) with `--federate-with b.test` once B's root exists."""
    ports = {A: free_port(), B: free_port()}
    url = {td: f"https://127.0.0.1:{port}/" for td, port in ports.items()}
    a = _start(work / "a", A, ports[A], extra=a_flags)
    b: RunningCa | None = None
    try:
        a_initial = initial_bundle(a, work / "a-initial.json")
        b = _start(work / "b", B, ports[B], f"{A}={url[A]},bundle={a_initial}")
        b_initial = initial_bundle(b, work / "b-initial.json")
        a.stop()
        a = _start(work / "a", A, ports[A], f"{B}={url[B]},bundle={b_initial}", extra=a_flags)
        pair = FederatedPair(a, b, ports)
        deadline = time.monotonic() + timeout
        while not (_federated(b, a, A) and _federated(a, b, B)):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the CAs did not fetch each other's bundles in {timeout}s:\n"
                    f"--- a.test\n{a.log()[-3000:]}\n--- b.test\n{b.log()[-3000:]}"
                )
            time.sleep(0.2)
        yield pair
    finally:
        a.stop()
        if b is not None:
            b.stop()


async def until_federated(agent: LiveAgent, td: str, timeout: float = 15.0) -> None:
    """Until the in-process `agent` holds a bundle of `td` (its first polls of its CA)."""
    async with asyncio.timeout(timeout):
        while True:
            bundles = agent.agent.cache.snapshot.bundles
            if bundles is not None and bundles.for_trust_domain(td) is not None:
                return
            await asyncio.sleep(0.05)
