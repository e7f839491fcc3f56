"""A real Envoy fetches `default` and `ROOTCA` from a Bulwark agent over SDS (Istio's bootstrap)."""

from __future__ import annotations

import json

from certs.pem import load_certificates
from tests.support.envoy import uri_sans
from tests.support.mesh import Mesh, spiffe_id


def test_envoy_serves_the_agents_certificate_and_trusts_the_cas_root(any_sds_mesh: Mesh) -> None:
    mesh = any_sds_mesh
    agent = mesh.agent("backend")
    server = mesh.server("backend", client="frontend")
    served = json.loads(agent.get("/debug/certs"))["default"]

    # `default`: the leaf Envoy serves is the agent's SVID (serial, SPIFFE ID).
    leaf = server.served_certificate()
    assert uri_sans(leaf) == [spiffe_id("backend")], leaf
    assert int(leaf["serial_number"], 16) == int(served["serial"], 16)
    assert len(served["chain"]) == 2  # leaf + the CA's self-signed root, as the agent got it

    # `ROOTCA`: Envoy validates peers against exactly the CA's root bundle.
    roots = load_certificates(mesh.ca.root_cert_path.read_bytes())
    trusted = {int(c["serial_number"], 16) for c in server.trusted_roots()}
    assert trusted == {c.serial_number for c in roots}

    stats = server.stats()
    for secret in ("default", "ROOTCA"):
        assert stats[f"sds.{secret}.update_success"] >= 1, secret
        assert stats[f"sds.{secret}.update_rejected"] == 0, secret
        assert stats[f"sds.{secret}.control_plane.connected_state"] == 1, secret
    method = {"GRPC": "StreamSecrets", "DELTA_GRPC": "DeltaSecrets"}[mesh.sds_api]
    assert server.sds_methods() == {method}
    assert server.stop() == 0, server.log()[-2000:]
