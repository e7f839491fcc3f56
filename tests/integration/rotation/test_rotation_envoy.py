"""Issue #17 with real Envoys: a root rotation to a new key while a client Envoy sends a
request every 50 ms through mTLS to a server Envoy, each fed over SDS by its own agent.

Zero failed requests (every request is a fresh connection, so a fresh handshake), and
every certificate an Envoy served, sampled during the run, verifies against the roots its
peer Envoy trusted (its `ROOTCA`) at that moment; the leaf comes from the CA's record.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certs.cli import main as bulwark
from certs.pem import load_certificates
from certs.verify import verify_svid
from tests.support.ca_process import started_ca
from tests.support.envoy import EnvoyProcess, http_get
from tests.support.mesh import Mesh

TTL_S = 8
DELAY_S = 3


@dataclass(frozen=True)
class Sample:
    at: datetime
    server_leaf: int  # serial the server Envoy serves
    client_trusts: frozenset[int]  # root serials the client Envoy verifies with
    client_leaf: int
    server_trusts: frozenset[int]


def _leaf_serial(envoy: EnvoyProcess) -> int:
    return int(envoy.served_certificate()["serial_number"], 16)


def _trusted(envoy: EnvoyProcess) -> frozenset[int]:
    return frozenset(int(c["serial_number"], 16) for c in envoy.trusted_roots())


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


class Run:
    """Requests every 50 ms, a sample of both Envoys every few requests, the CA's roots."""

    def __init__(self, ca_root: Path, server: EnvoyProcess, client: EnvoyProcess) -> None:
        self.ca_root, self.server, self.client = ca_root, server, client
        self.sent = 0
        self.failures: list[tuple[int, str]] = []
        self.samples: list[Sample] = []
        self.roots: dict[int, x509.Certificate] = {}

    def tick(self) -> None:
        status, body = http_get(self.client.port)
        self.sent += 1
        if status != 200:
            self.failures.append((status, body[:200]))
        for root in load_certificates(self.ca_root.read_bytes()):
            self.roots[root.serial_number] = root
        if self.sent % 4 == 0:
            self.samples.append(
                Sample(
                    datetime.now(UTC),
                    _leaf_serial(self.server),
                    _trusted(self.client),
                    _leaf_serial(self.client),
                    _trusted(self.server),
                )
            )
        time.sleep(0.05)

    def until(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting until {what}")
            for _ in range(5):
                self.tick()


def _leaf(admin_url: str, serial: int, cache: dict[int, x509.Certificate]) -> x509.Certificate:
    if serial not in cache:
        detail = _get(f"{admin_url}/v1/certificates/{serial:x}")
        cache[serial] = load_certificates(detail["certificate_pem"])[0]
    return cache[serial]


@pytest.mark.slow
def test_root_rotation_between_two_envoys_fails_no_request(
    tmp_path: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "admin-token"
    token.write_text("rotate-secret\n")
    token.chmod(0o600)
    flags = (
        "--ca-rotation", "new-key", "--ca-propagation-delay", f"{DELAY_S}s",
        "--max-workload-cert-ttl", f"{TTL_S}s", "--default-workload-cert-ttl", f"{TTL_S}s",
        "--material-check-interval", "0.2s", "--admin-token-file", str(token),
    )  # fmt: skip
    with ExitStack() as stack:
        ca = stack.enter_context(started_ca(tmp_path / "ca", *flags))
        mesh = Mesh(ca, work, stack)
        mesh.agent("backend", ttl=f"{TTL_S}s")
        mesh.agent("frontend", ttl=f"{TTL_S}s")
        server = mesh.server("backend", client="frontend")
        client = mesh.client("frontend", server=server, server_sa="backend", fresh_connections=True)
        pids = (server.process.pid, client.process.pid)  # type: ignore[union-attr]
        run = Run(ca.root_cert_path, server, client)
        old = set(run.roots) or {load_certificates(ca.root_cert_path.read_bytes())[0].serial_number}
        for _ in range(20):
            run.tick()

        admin = ["--admin-url", ca.admin_url, "--token-file", str(token), "-o", "json"]
        assert bulwark(["ca", "rotate", "prepare", *admin]) == 0
        prepared = json.loads(capsys.readouterr().out)["prepared"]["id"]
        status = f"{ca.admin_url}/v1/ca/rotation"
        run.until("activation", lambda: _get(status)["active"]["id"] == prepared, DELAY_S + 15)
        run.until("the old root is dropped", lambda: _get(status)["retired"] is None, TTL_S + 15)

        def published() -> set[int]:
            return {r.serial_number for r in load_certificates(ca.root_cert_path.read_bytes())}

        # root-cert.pem is written before the slots are stored: once the state says the old
        # root left, the file already holds the new one alone (issue 22 item 12).
        new = published()
        assert len(new) == 1, "the state dropped the old root before root-cert.pem did"
        assert not new & old
        run.until(
            "both Envoys trust only the new root",
            lambda: _trusted(server) == new and _trusted(client) == new,
            TTL_S + 10,
        )
        assert (server.process.pid, client.process.pid) == pids, "no Envoy restarted"  # type: ignore[union-attr]
        checked = _check_samples(run, ca.admin_url)  # reads the record while the CA runs

    assert run.failures == [], run.failures[:5]
    assert checked["issuers"] == old | new, "Envoys served leaves of the old, then the new root"
    print(
        f"\nenvoy rotation: {run.sent} requests, 0 failed; {checked['samples']} samples, each "
        "served leaf verified against the roots its peer trusted then"
    )


def _check_samples(run: Run, admin_url: str) -> dict[str, Any]:
    leaves: dict[int, x509.Certificate] = {}
    issuers: set[int] = set()
    for sample in run.samples:
        for leaf_serial, peer_trusts in (
            (sample.server_leaf, sample.client_trusts),
            (sample.client_leaf, sample.server_trusts),
        ):
            leaf = _leaf(admin_url, leaf_serial, leaves)
            trusted = [run.roots[s] for s in peer_trusts]
            verify_svid([leaf], trusted, now=sample.at)  # raises if the peer could not trust it
            issuers |= {
                s for s, r in run.roots.items() if r.subject == leaf.issuer and _signs(r, leaf)
            }
    return {"issuers": issuers, "samples": len(run.samples)}


def _signs(root: x509.Certificate, leaf: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except Exception:
        return False
    return True
