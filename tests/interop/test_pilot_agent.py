"""The real pilot-agent (istio.io/istio/pilot/cmd/pilot-agent) against Bulwark, outside Kubernetes.

With an Envoy stand-in (sidecar mode) and without Envoy (DISABLE_ENVOY, proxyless mode),
pilot-agent reads the projected token file, asks Bulwark for the workload certificate with
its CA client, writes OUTPUT_CERTS and, in sidecar mode, serves it over its SDS socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.ca_process import RunningCa
from tests.support.interop import IstioBinaries, metric, openssl_verify, spiffe_ids
from tests.support.pilot_agent import PilotAgent, Workload, pod_root, sds_fetch, start_pilot_agent

WEB = "spiffe://cluster.local/ns/demo/sa/web"


@pytest.fixture
def root() -> Iterator[Path]:
    yield from pod_root()


def check_output_certs(agent: PilotAgent, ca_root: Path, expected_id: str) -> None:
    """OUTPUT_CERTS: a chain of at least two that verifies, the right SPIFFE ID, the root."""
    out = agent.output_certs
    chain = (out / "cert-chain.pem").read_text()
    assert len(x509.load_pem_x509_certificates(chain.encode())) >= 2
    assert spiffe_ids(chain) == [expected_id]
    openssl_verify(chain, ca_root, agent.root / "verify")
    root_written = x509.load_pem_x509_certificates((out / "root-cert.pem").read_bytes())
    assert root_written == x509.load_pem_x509_certificates(ca_root.read_bytes())
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), password=None)
    leaf = x509.load_pem_x509_certificate(chain.encode())
    assert key.public_key() == leaf.public_key()
    assert (out / "key.pem").stat().st_mode & 0o077 == 0


def test_pilot_agent_sidecar_gets_certificate_and_serves_it_over_sds(
    istio: IstioBinaries, strict_ca: RunningCa, root: Path
) -> None:
    before = metric(strict_ca.admin_url, "citadel_server_success_cert_issuance_count")
    workload = Workload("demo", "web", "web-0", strict_ca.mint_token("demo", "web"))
    agent = start_pilot_agent(
        istio,
        root,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        workload=workload,
    )
    try:
        agent.wait_for_output_certs()
        agent.wait_for(agent.sds_socket, agent.root / "envoy-args.txt")
        check_output_certs(agent, strict_ca.root_cert_path, WEB)
        # pilot-agent started the stand-in with the bootstrap it rendered from Istio's template.
        args = agent.envoy_args
        assert args[:2] == ["-c", str(root / "etc/istio/proxy/envoy-rev.json")], args
        assert (root / "etc/istio/proxy/envoy-rev.json").stat().st_size > 0

        secrets = sds_fetch(
            agent.sds_socket,
            ["default", "ROOTCA"],
            node_id="sidecar~127.0.0.1~web-0.demo~demo.svc.cluster.local",
        )
        served = secrets["default"].tls_certificate.certificate_chain.inline_bytes
        assert spiffe_ids(served) == [WEB]
        openssl_verify(served.decode(), strict_ca.root_cert_path, root / "verify-sds")
        trusted = secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes
        assert x509.load_pem_x509_certificates(trusted) == x509.load_pem_x509_certificates(
            strict_ca.root_cert_path.read_bytes()
        )
    finally:
        code = agent.stop()
    assert code == 0, agent.log()
    assert "generated new workload certificate" in agent.log()
    assert metric(strict_ca.admin_url, "citadel_server_success_cert_issuance_count") >= before + 1


def test_pilot_agent_without_envoy_writes_output_certs(
    istio: IstioBinaries, strict_ca: RunningCa, root: Path
) -> None:
    workload = Workload("demo", "web", "web-1", strict_ca.mint_token("demo", "web"))
    agent = start_pilot_agent(
        istio,
        root,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        workload=workload,
        envoy=False,
    )
    try:
        agent.wait_for_output_certs()
        check_output_certs(agent, strict_ca.root_cert_path, WEB)
        assert agent.envoy_args == []
    finally:
        agent.stop()


def leaf_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_pilot_agent_rotates_at_half_life(
    istio: IstioBinaries, strict_ca: RunningCa, root: Path
) -> None:
    """SECRET_TTL=20s: Istio's secret cache renews at about half-life and rewrites OUTPUT_CERTS.

    Without Envoy (in sidecar mode a renewal is only pushed to a connected SDS stream).
    """
    workload = Workload("demo", "web", "web-2", strict_ca.mint_token("demo", "web"))
    agent = start_pilot_agent(
        istio,
        root,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        workload=workload,
        envoy=False,
        extra_env={"SECRET_TTL": "20s"},
    )
    try:
        agent.wait_for_output_certs()
        chain_file = agent.output_certs / "cert-chain.pem"
        first = leaf_serial(chain_file)
        deadline = time.monotonic() + 60
        while leaf_serial(chain_file) == first:
            assert time.monotonic() < deadline, f"no rotation within 60 s:\n{agent.log()}"
            assert agent.process.poll() is None, agent.log()
            time.sleep(0.5)
        time.sleep(0.5)  # key.pem and cert-chain.pem are written one after the other
        check_output_certs(agent, strict_ca.root_cert_path, WEB)
        leaf = x509.load_pem_x509_certificate(chain_file.read_bytes())
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(seconds=20 + 120)
    finally:
        agent.stop()
