"""A root change at the CA reaches Envoy's validation context over SDS without a restart.

The CA runs on a plugged-in `cacerts` directory (Istio's layout) that it re-reads every
`--material-check-interval`; a new, consistent set replaces the root. The CA rewrites its
`root-cert.pem`, each agent watches that file (its `CA_ROOT_CA`) and pushes `ROOTCA`, and the
next renewal brings a certificate under the new root.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from certs.pem import load_certificates
from tests.support.ca_process import started_ca
from tests.support.envoy import EnvoyProcess, http_get
from tests.support.mesh import Mesh
from tests.support.openssl import make_cacerts

TTL = "6s"


def _root_serial(pem_path: Path) -> int:
    return int(load_certificates(pem_path.read_bytes())[0].serial_number)


def _trusted(envoy: EnvoyProcess) -> set[int]:
    return {int(c["serial_number"], 16) for c in envoy.trusted_roots()}


@pytest.fixture
def plugged(tmp_path: Path, work: Path) -> Iterator[tuple[Mesh, Path]]:
    """A mesh whose CA signs with a plugged-in root and intermediate made by openssl."""
    cacerts = make_cacerts(tmp_path / "pki-a")
    with ExitStack() as stack:
        ca = stack.enter_context(
            started_ca(
                tmp_path / "ca", "--cacerts-dir", str(cacerts), "--material-check-interval", "0.3s"
            )
        )
        yield Mesh(ca, work, stack), cacerts


def _wait(what: str, check: Callable[[], bool], traffic: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"{what} within 30 s"
        if traffic is not None:
            traffic()
        time.sleep(0.1)


@pytest.mark.slow
def test_new_root_is_pushed_to_envoy_without_restart(
    plugged: tuple[Mesh, Path], tmp_path: Path
) -> None:
    mesh, cacerts = plugged
    mesh.agent("backend", ttl=TTL)
    mesh.agent("frontend", ttl=TTL)
    server = mesh.server("backend", client="frontend")
    client = mesh.client("frontend", server=server, server_sa="backend", fresh_connections=True)
    old_root = _root_serial(cacerts / "root-cert.pem")
    assert _trusted(server) == _trusted(client) == {old_root}
    assert http_get(client.port)[0] == 200
    pids = (server.process.pid, client.process.pid)  # type: ignore[union-attr]
    pushes = server.stats()["sds.ROOTCA.update_success"]

    other = make_cacerts(tmp_path / "pki-b")
    for name in ("cert-chain.pem", "ca-cert.pem", "root-cert.pem", "ca-key.pem"):
        (cacerts / name).write_bytes((other / name).read_bytes())
    new_root = _root_serial(other / "root-cert.pem")

    outcomes: list[int] = []

    def traffic() -> None:
        outcomes.append(http_get(client.port)[0])

    _wait("the CA published the new root", lambda: _root_serial(mesh.ca.root_cert_path) == new_root)
    # ROOTCA pushed to both Envoys; once both agents renewed under the new root, the old one
    # (it came with the previous certificate's chain) is gone from the validation context.
    # `e=envoy` binds the loop variable (ruff B023); mypy cannot infer such a lambda as the
    # Callable[[], bool] _wait takes, hence the two ignores.
    for envoy in (server, client):
        _wait(f"{envoy.name} trusts the new root", lambda e=envoy: new_root in _trusted(e), traffic)  # type: ignore[misc]
    for envoy in (server, client):
        _wait(f"{envoy.name} trusts only it", lambda e=envoy: _trusted(e) == {new_root}, traffic)  # type: ignore[misc]
    assert server.stats()["sds.ROOTCA.update_success"] > pushes
    assert server.stats()["sds.ROOTCA.update_rejected"] == 0
    print(
        f"\nhard root swap: {outcomes.count(200)} of {len(outcomes)} requests succeeded "
        "while the new root propagated"
    )

    # Both sides now hold certificates of the new root and still talk.
    _wait("a request succeeds under the new root", lambda: http_get(client.port)[0] == 200)
    assert (server.process.pid, client.process.pid) == pids  # type: ignore[union-attr]
