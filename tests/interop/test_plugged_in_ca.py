"""A plugged-in CA (root -> intermediate, Istio's `cacerts` layout): Istio takes the last
element of the response as the root and builds the chain through the intermediate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.ca_process import RunningCa, start_ca
from tests.support.interop import (
    IstioBinaries,
    openssl_verify,
    run_istio_csr,
    spiffe_ids,
    write_token,
)
from tests.support.openssl import make_cacerts
from tests.support.pilot_agent import Workload, pod_root, start_pilot_agent

WEB = "spiffe://cluster.local/ns/demo/sa/web"


@pytest.fixture(scope="module")
def plugged_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningCa, Path]]:
    base = tmp_path_factory.mktemp("plugged")
    cacerts = make_cacerts(base / "pki")
    ca = start_ca(base / "ca", "--cacerts-dir", str(cacerts))
    try:
        yield ca, cacerts
    finally:
        ca.stop()


def certs(pem: str | bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)


def test_istio_client_gets_leaf_intermediate_root(
    istio: IstioBinaries, plugged_ca: tuple[RunningCa, Path], tmp_path: Path
) -> None:
    ca, cacerts = plugged_ca
    token_file = write_token(tmp_path / "istio-token", ca.mint_token("demo", "web"))
    root_only = cacerts / "root-cert.pem"

    result = run_istio_csr(
        istio,
        ca_addr=ca.grpc_addr,
        root_cert=root_only,
        token_file=token_file,
        namespace="demo",
        service_account="web",
    )

    assert result.ok, f"{result.error}\n{result.log}"
    assert "pkiutil.VerifyCertificate" in result.verified  # through the intermediate
    assert len(result.chain) == 3
    assert certs(result.chain[1]) == certs((cacerts / "ca-cert.pem").read_text())
    assert certs(result.root) == certs(root_only.read_text())
    assert spiffe_ids(result.chain[0]) == [WEB]
    openssl_verify("".join(result.chain), root_only, tmp_path / "verify")


def test_pilot_agent_output_certs_carry_the_plugged_in_root(
    istio: IstioBinaries, plugged_ca: tuple[RunningCa, Path]
) -> None:
    ca, cacerts = plugged_ca
    root_only = cacerts / "root-cert.pem"
    for root in pod_root():
        agent = start_pilot_agent(
            istio,
            root,
            ca_addr=ca.grpc_addr,
            root_cert=root_only,
            workload=Workload("demo", "web", "web-0", ca.mint_token("demo", "web")),
            envoy=False,
        )
        try:
            agent.wait_for_output_certs()
            out = agent.output_certs
            chain = (out / "cert-chain.pem").read_text()
            assert spiffe_ids(chain) == [WEB]
            assert certs((out / "root-cert.pem").read_bytes()) == certs(root_only.read_bytes())
            openssl_verify(chain, root_only, root / "verify")
        finally:
            agent.stop()
