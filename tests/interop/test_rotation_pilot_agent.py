"""Issue #17 with Istio's real pilot-agent: a root rotation to a new key reaches it without
a restart.

pilot-agent (proxyless, OUTPUT_CERTS) renews against a CA started with `--ca-rotation
new-key`; the test plays the kubelet, copying the CA's root-cert.pem into the pod's
ConfigMap mount (`var/run/secrets/istio/root-cert.pem`) whenever it changes, as a mounted
`istio-ca-root-cert` ConfigMap would be refreshed. Through prepare, activation and drop,
pilot-agent keeps renewing (it must trust the CA's serving certificate, re-issued from
the new key at activation), its certificates move to the new key, its written roots end
with the new root alone, and its process is the one started at the beginning.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.support.ca_process import start_ca
from tests.support.interop import IstioBinaries
from tests.support.pilot_agent import Workload, pod_root, start_pilot_agent

TTL_S = 10
DELAY_S = 4


@pytest.fixture
def root() -> Iterator[Path]:
    yield from pod_root()


def _status(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin_url}/v1/ca/rotation", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def test_pilot_agent_follows_a_new_key_root_without_restart(
    istio: IstioBinaries, tmp_path: Path, root: Path
) -> None:
    token = tmp_path / "admin-token"
    token.write_text("rotate-secret\n")
    token.chmod(0o600)
    ca = start_ca(
        tmp_path / "ca",
        "--ca-rotation", "new-key", "--ca-propagation-delay", f"{DELAY_S}s",
        "--max-workload-cert-ttl", f"{TTL_S}s", "--default-workload-cert-ttl", f"{TTL_S}s",
        "--material-check-interval", "0.2s", "--admin-token-file", str(token),
    )  # fmt: skip
    workload = Workload("demo", "web", "web-rot", ca.mint_token("demo", "web"))
    agent = start_pilot_agent(
        istio,
        root,
        ca_addr=ca.grpc_addr,
        root_cert=ca.root_cert_path,
        workload=workload,
        envoy=False,
        extra_env={"SECRET_TTL": f"{TTL_S}s"},
    )
    mount = root / "var/run/secrets/istio/root-cert.pem"
    out = agent.output_certs
    pid = agent.process.pid

    def kubelet() -> None:
        data = ca.root_cert_path.read_bytes()
        if mount.read_bytes() != data:
            tmp = mount.with_suffix(".new")
            tmp.write_bytes(data)
            tmp.replace(mount)

    def until(what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert agent.process.poll() is None, f"pilot-agent exited:\n{agent.log()}"
            assert time.monotonic() < deadline, f"{what} within {timeout}s:\n{agent.log()[-3000:]}"
            kubelet()
            time.sleep(0.1)

    try:
        agent.wait_for_output_certs()
        old_root = _certs(ca.root_cert_path)[0]
        request = urllib.request.Request(
            f"{ca.admin_url}/v1/ca/rotation/prepare",
            method="POST",
            headers={"Authorization": "Bearer rotate-secret"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            prepared = json.loads(response.read())["prepared"]["id"]
        until("the mount holds both roots", lambda: len(_certs(mount)) == 2, 10)
        until("activation", lambda: _status(ca.admin_url)["active"]["id"] == prepared, 20)
        new_root = next(r for r in _certs(ca.root_cert_path) if r != old_root)

        def leaf_is_new() -> bool:
            chain = _certs(out / "cert-chain.pem")
            if not chain:
                return False
            try:
                chain[0].verify_directly_issued_by(new_root)
            except Exception:
                return False
            return True

        until("pilot-agent holds a certificate of the new key", leaf_is_new, TTL_S + 20)
        until("the old root is dropped", lambda: _status(ca.admin_url)["retired"] is None, 30)
        until(
            "pilot-agent writes the new root alone",
            lambda: _certs(out / "root-cert.pem") == [new_root],
            TTL_S + 20,
        )
        assert agent.process.pid == pid and agent.process.poll() is None, "never restarted"
    finally:
        agent.stop()
        ca.stop()
