"""Rotation pushed over SDS without restarting Envoy, while requests keep flowing."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.envoy import EnvoyProcess, http_get
from tests.support.mesh import Mesh

TTL = "6s"  # the agent renews at half the lifetime: a new certificate every ~3 s


def _serial(envoy: EnvoyProcess) -> int:
    return int(envoy.served_certificate()["serial_number"], 16)


@pytest.mark.slow
def test_rotation_is_picked_up_without_restart_and_no_request_fails(any_sds_mesh: Mesh) -> None:
    mesh = any_sds_mesh
    mesh.agent("backend", ttl=TTL)
    mesh.agent("frontend", ttl=TTL)
    server = mesh.server("backend", client="frontend")
    client = mesh.client("frontend", server=server, server_sa="backend", fresh_connections=True)
    pids = (server.process.pid, client.process.pid)  # type: ignore[union-attr]
    serials: dict[str, set[int]] = {"server": {_serial(server)}, "client": {_serial(client)}}

    sent, failures, client_cert_hashes = 0, [], set()
    deadline = time.monotonic() + 25
    while min(len(s) for s in serials.values()) < 3:  # two rotations on each side
        assert time.monotonic() < deadline, f"not rotated in 25 s: {serials}"
        status, body = http_get(client.port)
        sent += 1
        if status != 200:
            failures.append((status, body))
        else:
            xfcc = json.loads(body)["xfcc"]
            client_cert_hashes.add(xfcc.split("Hash=", 1)[1].split(";", 1)[0])
        serials["server"].add(_serial(server))
        serials["client"].add(_serial(client))
        time.sleep(0.05)

    print(
        f"\n{sent} requests across {len(serials['client']) - 1} client and "
        f"{len(serials['server']) - 1} server rotations: {len(failures)} failed"
    )
    assert failures == [], failures[:5]
    # Every request was a new handshake: the server saw the client's successive certificates.
    assert len(client_cert_hashes) >= 2, client_cert_hashes
    assert server.stats()["listener.inbound.ssl.handshake"] >= sent
    for envoy in (server, client):
        assert envoy.stats()["sds.default.update_success"] >= 3
        assert envoy.stats()["sds.default.update_rejected"] == 0
    # Same processes all along: pushed over SDS, not restarted.
    assert (server.process.pid, client.process.pid) == pids  # type: ignore[union-attr]
    assert server.process.poll() is None and client.process.poll() is None  # type: ignore[union-attr]
