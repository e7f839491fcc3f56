"""Against a real CA process: `bulwark cert request` (#14.4), and every command that prints
records or certificates in each output format (#14.1), tables within 100 columns."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from certs.cli import main
from certs.pem import load_certificates
from certs.verify import verify_svid
from tests.support.agent import short_dir
from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.ca_process import RunningCa, start_ca

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
FORMATS = ("table", "json", "yaml")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    running = start_ca(tmp_path_factory.mktemp("cli-ca") / "ca")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def issued(ca: RunningCa, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One certificate obtained with `bulwark cert request --token-file`."""
    out = tmp_path_factory.mktemp("issued")
    (out / "token").write_text(ca.mint_token("demo", "frontend"))
    code = main(["cert", "request", *_where(ca), "--token-file", str(out / "token"),
                 "-n", "demo", "-s", "frontend", "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def _where(ca: RunningCa, addr: str | None = None) -> list[str]:
    return ["--ca-addr", addr or ca.grpc_addr, "--root", str(ca.root_cert_path)]


def bulwark(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def parsed(fmt: str, out: str) -> object:
    return json.loads(out) if fmt == "json" else yaml.safe_load(out)


def test_cert_request_writes_a_verified_svid_and_a_private_key(ca: RunningCa, issued: Path) -> None:
    chain = load_certificates((issued / "cert-chain.pem").read_bytes())
    roots = load_certificates((issued / "root-cert.pem").read_bytes())
    assert roots == load_certificates(ca.root_cert_path.read_bytes())
    assert str(verify_svid(chain, roots, now=datetime.now(UTC))) == ME
    assert stat.S_IMODE(os.stat(issued / "key.pem").st_mode) == 0o600


@pytest.mark.parametrize("fmt", FORMATS)
def test_cert_request_renews_over_mtls_in_each_format(
    ca: RunningCa, issued: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Renewal with the current certificate on the mTLS port; the identity comes from it."""
    code, out, err = bulwark(capsys, "cert", "request", *_where(ca, ca.mtls_addr),
                             "--renew-from", str(issued), "--out", str(tmp_path), "-o", fmt)  # fmt: skip
    assert code == 0, err
    if fmt == "table":
        assert out.startswith(f"{ME}  serial ") and "wrote" in out
    else:
        summary = parsed(fmt, out)
        assert isinstance(summary, dict) and summary["spiffe_id"] == ME
        assert summary["files"]["key"] == str(tmp_path / "key.pem")
    old = load_certificates((issued / "cert-chain.pem").read_bytes())[0]
    new = load_certificates((tmp_path / "cert-chain.pem").read_bytes())[0]
    assert new.serial_number != old.serial_number


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            ["--token-file", "TOKEN", "-n", "demo", "-s", "frontend"],
            "did not accept the --token-file",
        ),
        (
            [
                "--token-file",
                "GOOD",
                "-n",
                "demo",
                "-s",
                "frontend",
                "--server-name",
                "wrong.example",
            ],
            "does not carry --server-name 'wrong.example'",
        ),
        (["--token-file", "GOOD", "-n", "demo", "-s", "backend"], "PERMISSION_DENIED"),
        (["--token-file", "GOOD"], "say which identity"),
    ],
    ids=["bad-token", "wrong-server-name", "other-identity", "no-identity"],
)
def test_cert_request_refusals_say_what_to_fix(
    ca: RunningCa, tmp_path: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "TOKEN").write_text("not-a-jwt")
    (tmp_path / "GOOD").write_text(ca.mint_token("demo", "frontend"))
    args = [str(tmp_path / a) if a in ("TOKEN", "GOOD") else a for a in extra]
    code, _, err = bulwark(capsys, "cert", "request", *_where(ca), *args, "--out", str(tmp_path))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "key.pem").exists()
    assert "not-a-jwt" not in err


def test_cert_request_to_a_stopped_ca_asks_if_it_runs(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t").write_text("x")
    code, _, err = bulwark(capsys, "cert", "request", *_where(ca, "127.0.0.1:1"),
                           "--token-file", str(tmp_path / "t"), "-n", "a", "-s", "b")  # fmt: skip
    assert code == 2 and "is the CA running? check --ca-addr" in err


def _fits(out: str) -> None:
    assert max(len(line) for line in out.splitlines()) <= 100, out


@pytest.mark.parametrize("fmt", FORMATS)
def test_certs_commands_in_each_format(
    ca: RunningCa, issued: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--admin-url", ca.admin_addr]  # HOST:PORT alone means http://
    code, out, err = bulwark(capsys, "certs", "list", *url, "-o", fmt, "--issued-since", "1h")
    assert code == 0, err
    serial = load_certificates((issued / "cert-chain.pem").read_bytes())[0].serial_number
    if fmt == "table":
        _fits(out)
        assert format(serial, "x") in out and "AUTHENTICATOR" in out
    else:
        items = parsed(fmt, out)
        assert isinstance(items, list) and format(serial, "x") in [i["serial"] for i in items]
    code, out, _ = bulwark(capsys, "certs", "show", format(serial, "x"), *url, "-o", fmt)
    assert code == 0 and (ME in out)
    code, out, _ = bulwark(capsys, "certs", "expiring", "--within", "3000h", *url, "-o", fmt)
    assert code == 1 and format(serial, "x") in out
    code, out, _ = bulwark(capsys, "certs", "verify-log", *url, "-o", fmt)
    assert code == 0 and ("record intact" in out if fmt == "table" else parsed(fmt, out)["ok"])  # type: ignore[index]


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_in_each_format(
    ca: RunningCa, issued: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = bulwark(capsys, "inspect", str(issued / "cert-chain.pem"),
                           "--root", str(ca.root_cert_path), "-o", fmt)  # fmt: skip
    assert code == 0
    if fmt == "table":
        assert "chain:  OK" in out
    else:
        assert parsed(fmt, out)["certificates"][0]["spiffe_id"] == ME  # type: ignore[index]


def test_inspect_connect_shows_the_cas_serving_chain(
    ca: RunningCa, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = bulwark(capsys, "inspect", "--connect", ca.grpc_addr, "--root",
                           str(ca.root_cert_path), "-o", "json")  # fmt: skip
    report = json.loads(out)
    assert code == 1 and report["verification"]["ok"] is True  # 1: a DNS-only leaf is no SVID
    assert "istiod.istio-system.svc" in report["certificates"][0]["dns_sans"]


@pytest.fixture(scope="module")
def agent(ca: RunningCa) -> Iterator[AgentProcess]:
    with short_dir() as work:
        process = start_agent_process(ca, work)
        try:
            process.wait_ready()
            yield process
        finally:
            process.stop()


@pytest.mark.parametrize("fmt", FORMATS)
def test_agent_status_in_each_format(
    agent: AgentProcess, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = bulwark(capsys, "agent", "status", "--socket", str(agent.socket), "-o", fmt)
    assert code == 0, err
    if fmt == "table":
        _fits(out.split("\nRoot fingerprints")[0])  # the table; fingerprints are 64 hex + subject
        assert "default" in out and "ROOTCA" in out and "ACTIVE" in out
    else:
        report = parsed(fmt, out)
        assert report["workload_api"]["spiffe_id"] == ME  # type: ignore[index]
    assert "PRIVATE KEY" not in out


def test_agent_status_defaults_to_the_agents_socket(
    agent: AgentProcess,
    work: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect #14.1: `agent status` required --socket though the agent has a default."""
    where = work / "var/run/secrets/workload-spiffe-uds"  # a short path: unix sockets take 107
    where.mkdir(parents=True)
    (where / "socket").symlink_to(agent.socket)
    monkeypatch.chdir(work)
    monkeypatch.delenv("WORKLOAD_IDENTITY_SOCKET_FILE", raising=False)
    code, out, err = bulwark(capsys, "agent", "status", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["socket"] == "./var/run/secrets/workload-spiffe-uds/socket"
