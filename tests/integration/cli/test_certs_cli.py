"""The `bulwark` command line: inspect, token mint, help."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from certs.keys import generate_key
from tests.support.broken import csr_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import REPO, RunningCa
from tests.support.openssl import self_signed_ca

BULWARK = str(REPO / ".venv/bin/bulwark")
ME = "spiffe://cluster.local/ns/demo/sa/frontend"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BULWARK, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_token_mint_then_inspect_an_issued_chain(running_ca: RunningCa, tmp_path: Path) -> None:
    minted = run(
        "token",
        "mint",
        "--data-dir",
        str(running_ca.data_dir),
        "-n",
        "demo",
        "-s",
        "frontend",
        "--ttl",
        "10m",
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    chain = create_certificate(
        channel(running_ca.grpc_addr, running_ca.root_cert_path),
        csr_pem(generate_key(), uris=(ME,)),
        token=token,
    )
    (tmp_path / "chain.pem").write_text("".join(chain))
    human = run("inspect", str(tmp_path / "chain.pem"), "--root", str(running_ca.root_cert_path))
    assert human.returncode == 0, human.stdout + human.stderr
    assert (
        ME in human.stdout
        and "chain:  OK" in human.stdout
        and "X.509-SVID: leaf conforms" in human.stdout
    )
    as_json = run(
        "inspect", "-", "--json", "--root", str(running_ca.root_cert_path), stdin="".join(chain)
    )
    report = json.loads(as_json.stdout)
    assert [c["position"] for c in report["certificates"]] == ["leaf", "root (1)"]
    assert report["certificates"][0]["spiffe_id"] == ME
    assert report["verification"]["ok"] is True and report["svid"]["conforms"] is True


def test_inspect_names_broken_svid_rules_and_wrong_root(
    running_ca: RunningCa, tmp_path: Path
) -> None:
    root = running_ca.root_cert_path.read_text()
    (tmp_path / "root.pem").write_text(root)
    result = run("inspect", str(tmp_path / "root.pem"), "--json")
    assert result.returncode == 1
    violations = json.loads(result.stdout)["svid"]["violations"]
    assert any("URI SAN" in v for v in violations)
    other = self_signed_ca(tmp_path / "k.pem", "/O=other", days=1)
    (tmp_path / "other.pem").write_text(other)
    chain = create_certificate(
        channel(running_ca.grpc_addr, running_ca.root_cert_path),
        csr_pem(generate_key(), uris=(ME,)),
        token=running_ca.mint_token("demo", "frontend"),
    )
    (tmp_path / "chain.pem").write_text("".join(chain))
    wrong = run("inspect", str(tmp_path / "chain.pem"), "--root", str(tmp_path / "other.pem"))
    assert wrong.returncode == 1 and "chain:  FAILED" in wrong.stdout


def test_inspect_unreadable_input_exits_2(tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("nothing here")
    result = run("inspect", str(tmp_path / "x.pem"))
    assert result.returncode == 2 and "no 'BEGIN CERTIFICATE' block" in result.stderr


def test_serve_help_documents_environment_variables() -> None:
    result = run("ca", "serve", "--help")
    assert result.returncode == 0
    for env in (
        "BULWARK_DATA_DIR",
        "TRUST_DOMAIN",
        "BULWARK_GRPC_ADDR",
        "BULWARK_CSR_SAN_POLICY",
        "TOKEN_AUDIENCES",
    ):
        assert env in result.stdout


def test_bad_flag_value_is_a_clear_startup_error(tmp_path: Path) -> None:
    result = run("ca", "serve", "--data-dir", str(tmp_path), "--grpc-addr", "nonsense")
    assert result.returncode == 2
    assert "--grpc-addr must be HOST:PORT" in result.stderr
