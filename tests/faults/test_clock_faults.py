"""A CA whose clock is behind its own CA certificates (issue 22 item 8), as a real process:
a plugged-in CA made with a NotBefore two hours ahead stands for a clock two hours behind.

The CA starts (the clock may be set right any minute), says in its log that its clock is
before its root's validity and to check NTP, and `/readyz` answers 503 with that reason.
What a client gets (UNAVAILABLE, not INTERNAL) is in tests/unit/ca_server/test_clock.py,
with a fake clock: here no client on this machine can even verify the CA's TLS certificate.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs.keys import generate_key, private_key_pem
from certs.pem import to_pem
from certs.profile import self_signed_root
from certs.spiffe_id import TrustDomain
from tests.support.ca_process import start_ca


def future_cacerts(directory: Path, ahead: timedelta) -> Path:
    """Istio's cacerts layout holding a self-signed root valid only from now + `ahead`."""
    key = generate_key()
    root = self_signed_root(
        key=key, trust_domain=TrustDomain("cluster.local"), now=datetime.now(UTC) + ahead
    )
    directory.mkdir(parents=True)
    (directory / "ca-key.pem").write_bytes(private_key_pem(key))
    (directory / "ca-key.pem").chmod(0o600)
    for name in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
        (directory / name).write_text(to_pem(root))
    return directory


def readyz(admin_url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(admin_url + "/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_a_ca_behind_its_root_says_so_and_is_not_ready(tmp_path: Path) -> None:
    cacerts = future_cacerts(tmp_path / "cacerts", timedelta(hours=2))
    ca = start_ca(tmp_path / "ca", "--cacerts-dir", str(cacerts))
    try:
        code, body = readyz(ca.admin_url)
        assert code == 503, body
        detail = str(body["detail"])
        assert "this CA's clock" in detail and "root" in detail and "NTP" in detail
        assert "1 worker(s) serving" in detail
        time.sleep(0.5)
        readyz(ca.admin_url)  # asked again: the log says it once per change, not per probe
    finally:
        ca.stop()
    lines = [
        line for line in ca.log().splitlines() if "before the validity of its own root" in line
    ]
    assert len(lines) == 1, lines
    assert "check the clock and NTP" in lines[0] and "ERROR" in lines[0]
    assert "Traceback" not in ca.log()
