"""A cross-trust-domain request through two real Envoys: a client Envoy on agent A (a.test)
calls a server Envoy on agent B (b.test) over mTLS, each side matching the other's foreign
SPIFFE ID exactly and trusting it through the federated roots in its SDS `ROOTCA`.

A peer outside both trust domains is refused by the server Envoy even when its certificate
names exactly the admitted SPIFFE ID: a raw TLS client presents a certificate for
spiffe://a.test/ns/demo/sa/frontend issued by an impostor "a.test" root, and one of c.test.
The same client with a certificate signed by CA A's real root gets through (the control).
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certs.keys import KeyType, PrivateKey, generate_key
from certs.pem import load_certificates
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent import short_dir
from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.envoy import (
    EnvoyProcess,
    client_bootstrap,
    http_get,
    local_upstream,
    running_envoy,
    server_bootstrap,
    uri_sans,
)
from tests.support.federation import NAMESPACE, A, B, FederatedPair, spiffe_id

FRONTEND, BACKEND = spiffe_id(A, "frontend"), spiffe_id(B, "backend")


@dataclass
class CrossMesh:
    pair: FederatedPair
    work: Path
    server: EnvoyProcess  # on agent B, admitting FRONTEND
    client: EnvoyProcess  # on agent A, expecting BACKEND
    agent_b: AgentProcess
    upstream: int  # the local app behind B's server Envoys


def agent_of(pair: FederatedPair, work: Path, td: str, account: str) -> AgentProcess:
    env = {"TRUST_DOMAIN": td, "ECC_SIGNATURE_ALGORITHM": "ECDSA"}
    env["BULWARK_TRUST_BUNDLE_REFRESH"] = "200ms"
    agent = start_agent_process(
        pair.ca(td), work, namespace=NAMESPACE, service_account=account, extra_env=env
    )
    agent.wait_ready()
    return agent


@pytest.fixture(scope="module")
def cross(pair: FederatedPair) -> Iterator[CrossMesh]:
    with short_dir() as work, ExitStack() as stack:
        agent_b = agent_of(pair, work, B, "backend")
        stack.callback(agent_b.stop)
        agent_a = agent_of(pair, work, A, "frontend")
        stack.callback(agent_a.stop)
        upstream = stack.enter_context(local_upstream())
        server = server_bootstrap(
            node="backend", socket=agent_b.socket, upstream_port=upstream, client_spiffe_id=FRONTEND
        )
        server_envoy = stack.enter_context(running_envoy("b-server", work, server))
        client = client_bootstrap(
            node="frontend",
            socket=agent_a.socket,
            server_port=server_envoy.port,
            server_spiffe_id=BACKEND,
        )
        client_envoy = stack.enter_context(running_envoy("a-client", work, client))
        yield CrossMesh(pair, work, server_envoy, client_envoy, agent_b, upstream)


def root_serials(envoy: EnvoyProcess) -> set[str]:
    return {str(root["serial_number"]).lower().lstrip("0") for root in envoy.trusted_roots()}


def ca_root_serial(pair: FederatedPair, td: str) -> str:
    cert = load_certificates(pair.ca(td).root_cert_path.read_bytes())[0]
    return format(cert.serial_number, "x").lstrip("0")


@pytest.mark.slow
def test_a_calls_b_across_trust_domains_through_envoy(cross: CrossMesh) -> None:
    status, body = http_get(cross.client.port, "/cross", timeout=10)
    assert status == 200, (body, cross.client.log()[-3000:], cross.server.log()[-3000:])
    seen = json.loads(body)
    assert seen["path"] == "/cross"
    assert f"URI={FRONTEND}" in seen["xfcc"], seen
    assert uri_sans(cross.server.served_certificate()) == [BACKEND]
    assert uri_sans(cross.client.served_certificate()) == [FRONTEND]
    # each Envoy's ROOTCA (from its own agent over SDS) holds its own and the foreign root
    both = {ca_root_serial(cross.pair, A), ca_root_serial(cross.pair, B)}
    assert root_serials(cross.server) == both and root_serials(cross.client) == both
    stats = cross.server.stats()
    assert stats["listener.inbound.ssl.fail_verify_error"] == 0
    assert stats["listener.inbound.ssl.fail_verify_san"] == 0


def _leaf_files(
    work: Path,
    name: str,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    uri: str = FRONTEND,
) -> tuple[Path, Path]:
    """A certificate for `uri` (by default FRONTEND, exactly the admitted ID) signed by
    `issuer`, as PEM files."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    now = datetime.now(UTC)
    key = generate_key(KeyType.EC_P256)
    leaf = leaf_certificate(
        spiffe_id=SpiffeId.parse(uri),
        public_key=key.public_key(),
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        now=now,
        ttl=timedelta(hours=1),
    )
    cert_path, key_path = work / f"{name}.pem", work / f"{name}-key.pem"
    cert_path.write_bytes(leaf.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def raw_get(port: int, cert: Path, key: Path) -> str:
    """GET / over TLS presenting `cert` (server not verified: only the server's check counts).
    The status line, or the error that ended the connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            ctx.wrap_socket(sock) as tls,
        ):
            tls.sendall(b"GET /raw HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
            answer = tls.recv(4096).decode(errors="replace")
            return answer.splitlines()[0] if answer else "closed"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def test_a_peer_outside_both_trust_domains_is_refused(cross: CrossMesh) -> None:
    now = datetime.now(UTC)
    port = cross.server.port
    before = cross.server.stats()
    # control: the admitted ID, issued under CA A's real root: through
    a_root = load_certificates(cross.pair.a.root_cert_path.read_bytes())[0]
    from certs.keys import load_private_key

    a_key = load_private_key((cross.pair.a.data_dir / "ca" / "ca-key.pem").read_bytes())
    good = raw_get(port, *_leaf_files(cross.work, "good", a_root, a_key))
    assert good.startswith("HTTP/1.1 200"), good
    for name, td in (("impostor", A), ("outsider", "c.test")):
        root_key = generate_key(KeyType.EC_P256)
        root = self_signed_root(key=root_key, trust_domain=TrustDomain(td), now=now)
        answer = raw_get(port, *_leaf_files(cross.work, name, root, root_key))
        assert not answer.startswith("HTTP/"), (name, answer)
    after = cross.server.stats()
    refusals = "listener.inbound.ssl.fail_verify_error"
    assert after[refusals] - before[refusals] == 2
    assert (
        after["listener.inbound.ssl.fail_verify_san"]
        == before["listener.inbound.ssl.fail_verify_san"]
    )
    upstream = "cluster.local-app.upstream_rq_total"
    assert after[upstream] - before[upstream] == 1  # the control only


def _ca_key(pair: FederatedPair, td: str) -> tuple[x509.Certificate, PrivateKey]:
    """A CA's root certificate and signing key (the forger here holds a federated peer's)."""
    from certs.keys import load_private_key

    ca = pair.ca(td)
    root = load_certificates(ca.root_cert_path.read_bytes())[0]
    return root, load_private_key((ca.data_dir / "ca" / "ca-key.pem").read_bytes())


def rootca_validator(envoy: EnvoyProcess) -> dict[str, Any]:
    """The ROOTCA validation context as Envoy holds it (from its agent over SDS)."""
    dump = json.loads(envoy.admin("/config_dump?resource=dynamic_active_secrets"))
    for entry in dump["configs"]:
        secret = entry["secret"]
        if secret["name"] == "ROOTCA":
            return dict(secret["validation_context"])
    raise AssertionError(f"no ROOTCA in envoy {envoy.name}'s secrets: {dump}")


OWN_B = spiffe_id(B, "backend")  # an identity of B's own trust domain


@pytest.mark.parametrize("shape", ["combined", "sds-only"])
def test_a_federated_root_cannot_vouch_for_our_own_ids(cross: CrossMesh, shape: str) -> None:
    """Defect: ROOTCA was one `trusted_ca` holding every trust domain's roots, so a leaf
    signed by a.test's root naming spiffe://b.test/ns/demo/sa/backend passed B's Envoy, exact
    SAN match and all. With a federated domain present the agent now serves Envoy's SPIFFE
    validator, one trust bundle per domain: the forgery fails verification while the same
    ID under B's own root, and A's real workloads, still pass. Both listener shapes: Istio's
    `combined_validation_context` (the exact SAN match merged in) and ROOTCA alone over SDS."""
    bootstrap = server_bootstrap(
        node="backend", socket=cross.agent_b.socket, upstream_port=cross.upstream,
        client_spiffe_id=OWN_B,
    )  # fmt: skip
    if shape == "sds-only":
        context = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
        tls = context["transport_socket"]["typed_config"]["common_tls_context"]
        combined = tls.pop("combined_validation_context")
        tls["validation_context_sds_secret_config"] = combined[
            "validation_context_sds_secret_config"
        ]
    with running_envoy(f"b-own-{shape}", cross.work, bootstrap) as server:
        before = server.stats()
        forged = raw_get(
            server.port, *_leaf_files(cross.work, "forged", *_ca_key(cross.pair, A), OWN_B)
        )
        assert not forged.startswith("HTTP/"), forged
        own = raw_get(server.port, *_leaf_files(cross.work, "own", *_ca_key(cross.pair, B), OWN_B))
        assert own.startswith("HTTP/1.1 200"), (own, server.log()[-3000:])
        after = server.stats()
        assert (
            after["listener.inbound.ssl.fail_verify_error"]
            - before.get("listener.inbound.ssl.fail_verify_error", 0)
            == 1
        )
        assert (
            after["cluster.local-app.upstream_rq_total"]
            - before.get("cluster.local-app.upstream_rq_total", 0)
            == 1
        )
    validator = rootca_validator(cross.server)["custom_validator_config"]
    assert validator["name"] == "envoy.tls.cert_validator.spiffe"
    assert {d["name"] for d in validator["typed_config"]["trust_domains"]} == {A, B}
    if shape == "combined":  # the exact SAN match still applies beside the validator
        wrong = raw_get(
            cross.server.port,
            *_leaf_files(cross.work, "other", *_ca_key(cross.pair, A), spiffe_id(A, "other")),
        )
        assert not wrong.startswith("HTTP/"), wrong
