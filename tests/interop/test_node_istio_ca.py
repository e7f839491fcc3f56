"""The node agent against Istio's own CA (issue 23): the batch call's fallback, end to end.

Istio's CA (`bench/istio-ca`: istiod's CA server and JWT authenticator, no Kubernetes) has no
`BatchCreateCertificates`. A real node agent (`--mode node --attestor unix`) pointed at it
gets UNIMPLEMENTED, falls back to one `CreateCertificate` per identity with Istio's
`ImpersonatedIdentity` (as ztunnel asks istiod), and says so on its status page. Without a
node authorizer istiod refuses every impersonation, so a workload's certificate is refused
with istiod's own words, kept as that identity's error, and the caller never gets a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.istio_ca import IstioCa, istio_ca_binary, start_istio_ca
from tests.support.agent import short_dir
from tests.support.node_agent import (
    NodeAgentProcess,
    fetch_command,
    spawn_as,
    start_node_agent,
    write_unix_identities,
)

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"


@dataclass(frozen=True)
class IstioCaForNode:
    """Istio's CA as the node agent sees it: one TLS port, tokens from the issuer it trusts."""

    ca: IstioCa
    issuer_dir: Path

    @property
    def grpc_addr(self) -> str:
        return self.ca.addr

    @property
    def mtls_addr(self) -> str:
        return ""

    @property
    def root_cert_path(self) -> Path:
        return self.ca.root

    def mint_token(self, namespace: str, service_account: str) -> str:
        from ca_server.authn.local_issuer import LocalIssuer

        issuer = LocalIssuer.load_or_create(self.issuer_dir)
        return issuer.mint(namespace=namespace, service_account=service_account)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeAgentProcess, IstioCa]]:
    work = tmp_path_factory.mktemp("node-istio-ca")
    ca = start_istio_ca(istio_ca_binary(), work, work / "issuer")
    try:
        with short_dir() as here:
            identities = write_unix_identities(
                here / "identities.yaml", [({"uid": 4101}, "demo/frontend")]
            )
            agent = start_node_agent(
                IstioCaForNode(ca, work / "issuer"), here, unix_identities=identities
            )
            try:
                yield agent, ca
            finally:
                assert agent.stop() == 0, agent.log()
    finally:
        ca.stop()


def test_istios_ca_gets_create_certificate_per_identity_and_its_refusal_is_kept(
    node: tuple[NodeAgentProcess, IstioCa],
) -> None:
    agent, _ = node
    holder = spawn_as(4101, 4101, fetch_command(agent.socket, "hold", "60"))
    try:
        agent.wait_until(
            lambda: any(
                item["spiffe_id"] == FRONTEND and item["error"]
                for item in agent.get("/debug/identities")["identities"]
            ),
            timeout=30,
            what="the frontend identity's refusal",
        )
        document = agent.get("/debug/identities")
    finally:
        holder.kill()
        holder.wait()
    assert document["ca_call"] == "CreateCertificate", document  # UNIMPLEMENTED was heard
    (item,) = [i for i in document["identities"] if i["spiffe_id"] == FRONTEND]
    assert item["serial"] is None and item["seconds_left"] is None
    assert "UNAUTHENTICATED" in item["error"] and "impersonat" in item["error"].lower(), item
    assert holder.stdout is not None and holder.stdout.read() == ""  # the caller got nothing
    assert "PRIVATE KEY" not in agent.log()
