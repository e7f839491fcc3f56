"""Issue #17: a root rotation to a new key under live mTLS traffic, with real processes.

A CA (`--ca-rotation new-key`, second-scale TTL and propagation delay), two Bulwark
agents writing OUTPUT_CERTS, and a Python TLS server and client that use those files
(Envoy is not used here: the harness for it is not in this branch yet). The client sends
a request every 50 ms through mTLS while the operator prepares a new root with
`bulwark ca rotate prepare`, the CA activates it on its own after the propagation delay,
and drops the old root once the maximum workload TTL has passed since activation.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certs.cli import main as bulwark
from certs.pem import load_certificates, sha256_fingerprint
from certs.verify import verify_svid
from tests.support.agent_process import start_agent_process
from tests.support.ca_process import start_ca
from tests.support.rotation_peers import Client, Record, Server, read_credentials

TTL_S = 8  # workload certificates; agents renew at half-life
DELAY_S = 3  # propagation delay
PERIOD_S = 0.05


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.05)


def _status(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin_url}/v1/ca/rotation", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def _issuer(leaf: x509.Certificate, roots: dict[str, x509.Certificate]) -> str:
    for fp, root in roots.items():
        try:
            leaf.verify_directly_issued_by(root)
        except Exception:
            continue
        return fp
    return "unknown"


@pytest.mark.slow
def test_root_rotation_under_mtls_traffic_has_no_failed_handshake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "admin-token"
    token.write_text("rotate-secret\n")
    token.chmod(0o600)
    ca = start_ca(
        tmp_path / "ca",
        "--ca-rotation", "new-key",
        "--ca-propagation-delay", f"{DELAY_S}s",
        "--max-workload-cert-ttl", f"{TTL_S}s",
        "--default-workload-cert-ttl", f"{TTL_S}s",
        "--material-check-interval", "0.2s",
        "--admin-token-file", str(token),
    )  # fmt: skip
    agents = []
    peers: list[Server | Client] = []
    try:
        outs = {}
        for sa in ("server", "client"):
            out = tmp_path / f"out-{sa}"
            outs[sa] = out
            agents.append(
                start_agent_process(
                    ca,
                    tmp_path,
                    service_account=sa,
                    extra_env={"OUTPUT_CERTS": str(out), "SECRET_TTL": f"{TTL_S}s"},
                )
            )
        for out in outs.values():
            read_credentials(out, timeout=30)
        old_root = load_certificates(ca.root_cert_path.read_bytes())
        assert len(old_root) == 1

        record = Record()
        server = Server(outs["server"], record)
        peers.append(server)
        peers.append(Client(outs["client"], server, record, PERIOD_S))
        time.sleep(1.5)

        admin = ["--admin-url", ca.admin_url, "--token-file", str(token), "-o", "json"]
        assert bulwark(["ca", "rotate", "prepare", *admin]) == 0
        prepared = json.loads(capsys.readouterr().out)["prepared"]["id"]
        assert bulwark(["ca", "rotate", "activate", *admin]) == 1, "refused before the delay"
        assert "propagation delay" in capsys.readouterr().err
        # the verb's answer comes after root-cert.pem holds the prepared root (issue 22 item 12)
        assert len(load_certificates(ca.root_cert_path.read_bytes())) == 2
        _wait(
            "the CA activated the prepared root",
            lambda: _status(ca.admin_url)["active"]["id"] == prepared,
            DELAY_S + 10,
        )
        activated = time.monotonic()
        _wait(
            "the CA dropped the old root",
            lambda: _status(ca.admin_url)["retired"] is None,
            TTL_S + 10,
        )
        bundle = load_certificates(ca.root_cert_path.read_bytes())
        assert len(bundle) == 1 and bundle[0] != old_root[0]
        new_root = bundle[0]
        # Agents renew past the drop; then their own bundles hold the new root only.
        for out in outs.values():
            _wait(
                f"{out.name} trusts only the new root",
                lambda out=out: read_credentials(out).roots == [new_root],  # type: ignore[misc]
                TTL_S + 5,
            )
        time.sleep(0.5)
    finally:
        for peer in reversed(peers):
            peer.stop()
        for agent in agents:
            agent.stop()
        ca.stop()

    roots = {sha256_fingerprint(r): r for r in (*old_root, new_root)}
    old_fp, new_fp = sha256_fingerprint(old_root[0]), sha256_fingerprint(new_root)
    assert record.failures == [], record.failures[:5]
    elapsed = record.exchanges[-1].at - record.exchanges[0].at
    # A request is started every 50 ms (each re-reads the files and does a full handshake,
    # so a loaded machine completes fewer); the traffic never stalled across the rotation.
    gaps = [b.at - a.at for a, b in zip(record.exchanges, record.exchanges[1:], strict=False)]
    assert max(gaps) < 2.5, f"requests stalled for {max(gaps):.2f}s"
    issuers = {"client": set(), "server": set()}  # type: dict[str, set[str]]
    for ex in record.exchanges:
        for side, leaf_der, peer_roots in (
            ("client", ex.client_leaf, ex.server_roots),
            ("server", ex.server_leaf, ex.client_roots),
        ):
            leaf = x509.load_der_x509_certificate(leaf_der)
            issuers[side].add(_issuer(leaf, roots))
            if peer_roots:  # what the peer trusted when it accepted this certificate
                verify_svid([leaf], load_certificates(peer_roots), now=ex.wall)
    assert issuers == {"client": {old_fp, new_fp}, "server": {old_fp, new_fp}}, (
        "both sides served certificates of the old key, then of the new one"
    )
    print(
        f"rotation: {len(record.exchanges)} mTLS requests over {elapsed:.1f}s (longest gap "
        f"{max(gaps) * 1000:.0f} ms), 0 failures; "
        f"old root dropped {time.monotonic() - activated:.1f}s after activation"
    )
