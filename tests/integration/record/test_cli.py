"""`bulwark certs` against a real CA process: tables, JSON, exit codes, tamper reports."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from ca_server.cli.records import print_table
from certs.csr import build_csr
from certs.keys import generate_key
from certs.pem import load_certificates, serial_hex
from certs.spiffe_id import SpiffeId
from certs.values import time_left
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import REPO, RunningCa, start_ca

BULWARK = str(Path(sys.executable).parent / "bulwark")


def bulwark(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BULWARK, *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )


def issue(ca: RunningCa, namespace: str, sa: str, ttl_s: int) -> str:
    """Ask the CA for a certificate; return its serial."""
    csr = build_csr(
        generate_key(), SpiffeId.parse(f"spiffe://cluster.local/ns/{namespace}/sa/{sa}")
    )
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        chain = create_certificate(chan, csr, token=ca.mint_token(namespace, sa), ttl_s=ttl_s)
    return serial_hex(load_certificates(chain[0])[0])


@dataclass
class Issued:
    ca: RunningCa
    soon: str  # expires in 30 minutes
    later: list[str]  # expire in 24 hours


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issued]:
    ca = start_ca(tmp_path_factory.mktemp("cli") / "ca")
    try:
        soon = issue(ca, "shop", "cart", 1800)
        later = [issue(ca, "shop", "web", 86400), issue(ca, "bank", "ledger", 86400)]
        yield Issued(ca, soon, later)
    finally:
        ca.stop()


def test_list_table(issued: Issued) -> None:
    result = bulwark("certs", "list", "--admin-url", issued.ca.admin_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # NOT AFTER left the table so it fits 100 columns (#14.1); -o json carries it
    assert lines[0].split() == ["SPIFFE", "ID", "SERIAL", "TIME", "LEFT", "AUTHENTICATOR"]
    assert len(lines) == 4 and "\033[" not in result.stdout  # no colour when not a TTY
    row = next(line for line in lines if issued.soon in line)
    assert "spiffe://cluster.local/ns/shop/sa/cart" in row and "jwt" in row and "29m" in row


def test_list_json_and_filters(issued: Issued) -> None:
    result = bulwark("certs", "list", "--json", "-n", "shop", "--admin-url", issued.ca.admin_url)
    items = json.loads(result.stdout)
    assert {i["serial"] for i in items} == {issued.soon, issued.later[0]}
    result = bulwark(
        "certs",
        "list",
        "--json",
        "--spiffe-id",
        "spiffe://cluster.local/ns/bank/sa/ledger",
        "--admin-url",
        issued.ca.admin_url,
    )
    assert [i["serial"] for i in json.loads(result.stdout)] == [issued.later[1]]


def test_admin_url_from_environment(issued: Issued) -> None:
    env = {"PATH": "/usr/bin:/bin", "BULWARK_ADMIN_URL": issued.ca.admin_url}
    result = bulwark("certs", "list", "--json", env=env)
    assert result.returncode == 0 and len(json.loads(result.stdout)) == 3


def test_show(issued: Issued) -> None:
    result = bulwark("certs", "show", issued.soon.upper(), "--admin-url", issued.ca.admin_url)
    assert result.returncode == 0, result.stderr
    assert "serial" in result.stdout and issued.soon in result.stdout
    assert "-----BEGIN CERTIFICATE-----" in result.stdout
    assert "csr_sha256" in result.stdout and "issuer_serial" in result.stdout
    cert = load_certificates(result.stdout[result.stdout.index("-----BEGIN") :])[0]
    assert serial_hex(cert) == issued.soon


def test_show_unknown_serial(issued: Issued) -> None:
    result = bulwark("certs", "show", "abcdef", "--admin-url", issued.ca.admin_url)
    assert result.returncode == 2
    assert "404" in result.stderr and "no certificate with serial abcdef" in result.stderr


def test_expiring_exit_codes(issued: Issued) -> None:
    hit = bulwark("certs", "expiring", "--within", "1h", "--admin-url", issued.ca.admin_url)
    assert hit.returncode == 1 and issued.soon in hit.stdout
    assert all(s not in hit.stdout for s in issued.later)
    miss = bulwark("certs", "expiring", "--within", "10m", "--admin-url", issued.ca.admin_url)
    assert miss.returncode == 0 and "no active certificate expires within 10m" in miss.stdout


def test_bad_duration_says_so(issued: Issued) -> None:
    result = bulwark(
        "certs", "list", "--expiring-within", "soon", "--admin-url", issued.ca.admin_url
    )
    # checked by the CLI now, in the one message style of certs/values.py (#11.6)
    assert result.returncode == 2 and "--expiring-within must be a duration" in result.stderr
    assert "got 'soon'" in result.stderr


def test_unreachable_admin_api() -> None:
    result = bulwark("certs", "list", "--admin-url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "cannot reach the admin API" in result.stderr


def test_colour_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    item = {
        "spiffe_id": "spiffe://td/ns/a/sa/b",
        "serial": "ab",
        "not_after": "x",
        "seconds_left": 600,
        "authenticator": "jwt",
    }
    tty, plain = Tty(), io.StringIO()
    print_table([item], tty)
    print_table([item], plain)
    assert "\033[31m10m" in tty.getvalue() and "\033[" not in plain.getvalue()
    assert time_left(-90) == "-1m30s" and time_left(90061) == "1d1h"  # the one format (#14.1)


def test_verify_log_reports_an_edited_row(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca")
    try:
        serials = [issue(ca, "shop", "cart", 3600) for _ in range(4)]
        ok = bulwark("certs", "verify-log", "--admin-url", ca.admin_url)
        assert ok.returncode == 0 and "record intact: 4 row(s) verified" in ok.stdout
        db = sqlite3.connect(ca.data_dir / "record.db")
        db.execute(
            "UPDATE certificates SET spiffe_id = 'spiffe://cluster.local/ns/x/sa/y'"
            " WHERE serial = ?",
            (serials[2],),
        )
        db.commit()
        db.close()
        bad = bulwark("certs", "verify-log", "--admin-url", ca.admin_url)
        assert bad.returncode == 1
        assert f"record BROKEN at seq 3 (serial {serials[2]})" in bad.stdout
        direct = bulwark(
            "certs", "verify-log", "--json", "--record", f"sqlite:///{ca.data_dir / 'record.db'}"
        )
        assert direct.returncode == 1
        assert json.loads(direct.stdout)["broken"]["serial"] == serials[2]
    finally:
        ca.stop()


def test_listing_beyond_loopback_needs_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("correct-horse-battery\n")
    token_file.chmod(0o600)
    ca = RunningCa(
        data_dir=tmp_path / "ca",
        args=("--workers", "1", "--admin-token-file", str(token_file)),
        env={},
    )
    ca.start(admin_addr="0.0.0.0:0")
    url = f"http://127.0.0.1:{ca.admin_addr.rsplit(':', 1)[1]}"
    try:
        issue(ca, "shop", "cart", 3600)
        assert httpx.get(url + "/v1/certificates").status_code == 401
        wrong = httpx.get(url + "/v1/certificates", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "correct-horse" not in wrong.text
        refused = bulwark("certs", "list", "--admin-url", url)
        assert refused.returncode == 2 and "401" in refused.stderr
        allowed = bulwark(
            "certs", "list", "--json", "--admin-url", url, "--token-file", str(token_file)
        )
        assert allowed.returncode == 0 and len(json.loads(allowed.stdout)) == 1
        assert "correct-horse" not in allowed.stdout + allowed.stderr
        assert httpx.get(url + "/v1/trust-bundle").status_code == 200
    finally:
        ca.stop()


def test_record_failure_fails_the_request_and_issues_nothing(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca")
    try:
        issue(ca, "shop", "cart", 3600)  # creates the record
        db = sqlite3.connect(ca.data_dir / "record.db")
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON certificates"
            " BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
        db.commit()
        with pytest.raises(grpc.RpcError) as info:
            issue(ca, "shop", "cart", 3600)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "record" in (info.value.details() or "")
        assert "refused by test" not in (info.value.details() or "")  # no database internals
        db.execute("DROP TRIGGER refuse")
        db.commit()
        db.close()
        third = issue(ca, "shop", "cart", 3600)  # the CA recovers once the record does
        listed = bulwark("certs", "list", "--json", "--admin-url", ca.admin_url)
        serials = [item["serial"] for item in json.loads(listed.stdout)]
        assert len(serials) == 2 and serials[0] == third
    finally:
        ca.stop()
