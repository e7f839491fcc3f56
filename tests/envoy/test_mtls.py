"""Envoy-to-Envoy mTLS through two Bulwark agents, peers authorized by exact URI SAN."""

from __future__ import annotations

import json

from tests.support.envoy import http_get
from tests.support.mesh import Mesh, spiffe_id


def test_request_succeeds_and_the_upstream_sees_the_callers_spiffe_id(mesh: Mesh) -> None:
    mesh.agent("backend")
    mesh.agent("frontend")
    server = mesh.server("backend", client="frontend")
    client = mesh.client("frontend", server=server, server_sa="backend")

    status, body = http_get(client.port, "/hello")
    assert status == 200, (body, client.log()[-2000:])
    seen = json.loads(body)
    assert seen["path"] == "/hello"
    # The server Envoy put the verified client certificate's URI SAN in x-forwarded-client-cert.
    assert f"URI={spiffe_id('frontend')}" in seen["xfcc"], seen

    server_stats, client_stats = server.stats(), client.stats()
    assert server_stats["listener.inbound.ssl.handshake"] >= 1
    assert client_stats["cluster.server.ssl.handshake"] >= 1
    for stats, prefix in ((server_stats, "listener.inbound"), (client_stats, "cluster.server")):
        assert stats[f"{prefix}.ssl.fail_verify_san"] == 0
        assert stats[f"{prefix}.ssl.fail_verify_error"] == 0


def test_a_peer_with_another_spiffe_id_is_refused_both_ways(mesh: Mesh) -> None:
    for account in ("backend", "frontend", "intruder"):
        mesh.agent(account)
    server = mesh.server("backend", client="frontend")

    # Server side: a client with a valid certificate of the same CA but another SPIFFE ID.
    intruder = mesh.client("intruder", server=server, server_sa="backend")
    status, _ = http_get(intruder.port)
    assert status == 503
    assert server.stats()["listener.inbound.ssl.fail_verify_san"] >= 1
    assert server.stats()["cluster.local-app.upstream_rq_total"] == 0  # never reached the app

    # Client side: the server's certificate does not carry the SPIFFE ID the client expects.
    confused = mesh.client("frontend", server=server, server_sa="payments")
    status, _ = http_get(confused.port)
    assert status == 503
    assert confused.stats()["cluster.server.ssl.fail_verify_san"] >= 1
    assert server.stats()["cluster.local-app.upstream_rq_total"] == 0
