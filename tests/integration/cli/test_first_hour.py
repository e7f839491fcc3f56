"""Issue 22, "the first hour of an operator", against real CA processes: each mix-up a new
user made gets a message pointing at its own fix, not "is the CA running? check --ca-addr".

- a token sent to the mTLS port; `--renew-from` sent to the token port (and to the default
  address); a client certificate the CA no longer accepts (signed by a root of the same name
  and another key, as after a root rotation retired it);
- a `--ttl` beyond the CA's maximum, echoed in the unit typed; a CSR for another trust
  domain, answered without suggesting `--csr-san-policy=override`;
- grpc's C-core lines kept off the CLI's stderr;
- `token mint`: a data dir with no CA, a token of another data dir's issuer, a lifetime the
  CA refuses, all said at mint time or by the CA's refusal;
- `ca serve --data-dir ""` and `--data-dir /proc/...`;
- `certs list`: JWT-SVIDs told apart from certificates (KIND, `--kind`, the API's `kind`).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from certs.cli import main
from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from tests.support.ca_client import channel
from tests.support.ca_process import REPO, RunningCa, start_ca, tree_env
from tests.support.openssl import self_signed_ca

BULWARK = str(REPO / ".venv/bin/bulwark")
RUNNING = "is the CA running"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    running = start_ca(tmp_path_factory.mktemp("first-hour") / "ca", "--max-token-lifetime", "2h")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def issued(ca: RunningCa, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate of `ca`, for --renew-from."""
    out = tmp_path_factory.mktemp("issued")
    (out / "token").write_text(ca.mint_token("demo", "frontend"))
    assert main([*_to(ca, ca.grpc_addr), "--token-file", str(out / "token"),
                 "-n", "demo", "-s", "frontend", "--out", str(out)]) == 0  # fmt: skip
    return out


def _to(ca: RunningCa, addr: str) -> list[str]:
    return ["cert", "request", "--ca-addr", addr, "--root", str(ca.root_cert_path)]


def request(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`bulwark cert request ...` in-process: it must fail with one line; that line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def token_file(ca: RunningCa, where: Path) -> str:
    (where / "token").write_text(ca.mint_token("demo", "frontend"))
    return str(where / "token")


def test_a_token_sent_to_the_mtls_port_is_told_the_token_port(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = request(capsys, *_to(ca, ca.mtls_addr), "--token-file", token_file(ca, tmp_path),
                   "-n", "demo", "-s", "frontend", "--out", str(tmp_path))  # fmt: skip
    assert RUNNING not in line
    assert "closed the connection during the TLS handshake" in line
    assert "client-certificate port" in line and "token port (--grpc-addr, 15012" in line


def test_renewal_sent_to_the_token_port_is_told_the_renewal_port(
    ca: RunningCa, issued: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = request(capsys, *_to(ca, ca.grpc_addr), "--renew-from", str(issued),
                   "--out", str(tmp_path))  # fmt: skip
    assert RUNNING not in line
    assert "that is its token port" in line and "mTLS port (--mtls-grpc-addr, 15013" in line


def test_renewal_with_the_default_address_says_to_use_15013(
    ca: RunningCa,
    issued: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CA_ADDR", raising=False)
    line = request(capsys, "cert", "request", "--root", str(ca.root_cert_path),
                   "--renew-from", str(issued), "--out", str(tmp_path))  # fmt: skip
    # Nothing listens on 127.0.0.1:15012 in the suite, or a CA does: either way, 15013.
    assert "127.0.0.1:15012" in line and "mTLS port" in line and "15013" in line, line


def test_a_client_certificate_of_a_retired_root_is_named_not_the_ca_address(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A root rotated to a new key keeps its name (O=<trust domain>); a leaf under the retired
    one fails the handshake on the mTLS port. Another CA's root of the same name does the same."""
    other = start_ca(tmp_path / "other")
    try:
        old = tmp_path / "old"
        old.mkdir()
        assert main(["cert", "request", "--ca-addr", other.grpc_addr, "--root",
                     str(other.root_cert_path), "--token-file", token_file(other, tmp_path),
                     "-n", "demo", "-s", "frontend", "--out", str(old)]) == 0  # fmt: skip
    finally:
        other.stop()
    capsys.readouterr()
    line = request(capsys, *_to(ca, ca.mtls_addr), "--renew-from", str(old),
                   "--out", str(tmp_path))  # fmt: skip
    assert RUNNING not in line
    assert f"did not accept the client certificate in --renew-from {old}" in line
    assert "does not verify against --root" in line and "root was retired" in line
    assert "--token-file" in line


@pytest.mark.parametrize(("typed", "most"), [("100d", "90d"), ("2400h", "2160h")])
def test_a_ttl_beyond_the_maximum_is_answered_in_the_unit_typed(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str], typed: str, most: str
) -> None:
    line = request(capsys, *_to(ca, ca.grpc_addr), "--token-file", token_file(ca, tmp_path),
                   "-n", "demo", "-s", "frontend", "--ttl", typed, "--out", str(tmp_path))  # fmt: skip
    assert f"--ttl {typed}" in line and f"at most {most}" in line, line


def test_a_csr_for_another_trust_domain_points_at_the_clients_trust_domain(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = request(capsys, *_to(ca, ca.grpc_addr), "--token-file", token_file(ca, tmp_path),
                   "-n", "demo", "-s", "frontend", "--trust-domain", "example.org",
                   "--out", str(tmp_path))  # fmt: skip
    assert "PERMISSION_DENIED" in line and "override" not in line
    assert "trust domain example.org and this CA's is cluster.local" in line
    assert "check the client's trust domain setting" in line


def test_a_csr_for_another_account_points_at_the_credential(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = request(capsys, *_to(ca, ca.grpc_addr), "--token-file", token_file(ca, tmp_path),
                   "-n", "demo", "-s", "backend", "--out", str(tmp_path))  # fmt: skip
    assert "override" not in line and "authenticate as the identity asked for" in line


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `bulwark` in a fresh process, no grpc setting of ours inherited."""
    env = {k: v for k, v in tree_env(os.environ).items() if not k.startswith("GRPC_")}
    return subprocess.run(
        [BULWARK, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_grpc_core_log_lines_stay_off_the_clis_stderr(ca: RunningCa, tmp_path: Path) -> None:
    """`I1205 ... ssl_transport_security.cc ... Handshake failed` came before the CLI's line."""
    other = tmp_path / "not-our-root.pem"
    self_signed_ca(tmp_path / "not-our-key.pem", "/O=elsewhere", out=other)
    result = run("cert", "request", "--ca-addr", ca.grpc_addr, "--root", str(other),
                 "--token-file", token_file(ca, tmp_path), "-n", "demo", "-s", "frontend",
                 "--out", str(tmp_path), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "ssl_transport_security" not in result.stderr and "Handshake failed" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("bulwark cert request: --root") and "does not verify" in line


def mint(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run("token", "mint", "-n", "demo", "-s", "frontend", *argv, cwd=cwd)


def test_token_mint_refuses_a_data_dir_with_no_ca_unless_init(tmp_path: Path) -> None:
    refused = mint("--data-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "holds no CA and no token issuer" in refused.stderr and "--init" in refused.stderr
    assert not (tmp_path / "nowhere").exists(), "a refused mint creates nothing"
    made = mint("--data-dir", str(tmp_path / "later"), "--init", cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.count(".") == 2, made.stderr
    again = mint("--data-dir", str(tmp_path / "later"), cwd=tmp_path)  # the issuer exists now
    assert again.returncode == 0, again.stderr


def test_a_token_of_another_data_dirs_issuer_is_refused_naming_its_issuer(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minted = mint("--data-dir", str(tmp_path / "elsewhere"), "--init", cwd=tmp_path)
    assert minted.returncode == 0, minted.stderr
    (tmp_path / "token").write_text(minted.stdout.strip())
    line = request(capsys, *_to(ca, ca.grpc_addr), "--token-file", str(tmp_path / "token"),
                   "-n", "demo", "-s", "frontend", "--out", str(tmp_path))  # fmt: skip
    assert "not among the signing keys of its issuer 'https://bulwark.local/token-issuer'" in line
    assert "another data dir" in line and "the CA's --data-dir" in line


def test_token_mint_warns_when_the_ca_would_refuse_its_lifetime(
    ca: RunningCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CA recorded its --max-token-lifetime (2h) at start; a 3h token is warned about, and
    the CA does refuse it. A data dir whose CA never started is warned with the default."""
    minted = mint("--data-dir", str(ca.data_dir), "--ttl", "3h", cwd=tmp_path)
    assert minted.returncode == 0, minted.stderr
    (warning,) = minted.stderr.strip().splitlines()
    assert warning.startswith("bulwark token mint: warning: --ttl 3h is longer than 2h, the ")
    assert f"--max-token-lifetime the CA of {ca.data_dir} last started with" in warning
    (tmp_path / "token").write_text(minted.stdout.strip())
    line = request(capsys, *_to(ca, ca.grpc_addr), "--token-file", str(tmp_path / "token"),
                   "-n", "demo", "-s", "frontend", "--out", str(tmp_path))  # fmt: skip
    assert "token lifetime exceeds the maximum this CA accepts (7200s)" in line
    assert "the token's is 3h, the CA's --max-token-lifetime 2h" in line
    fresh = mint("--data-dir", str(tmp_path / "fresh"), "--init", "--ttl", "48h", cwd=tmp_path)
    assert fresh.returncode == 0
    assert "longer than 24h, the CA's default --max-token-lifetime" in fresh.stderr
    quiet = mint("--data-dir", str(ca.data_dir), "--ttl", "1h", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


SERVE = ("ca", "serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
         "--mtls-grpc-addr", "", "--workers", "1")  # fmt: skip


def test_ca_serve_refuses_an_empty_data_dir(tmp_path: Path) -> None:
    """`--data-dir ""` made the current directory the CA's data dir."""
    result = run(*SERVE, "--data-dir", "", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "bulwark ca serve: --data-dir (env BULWARK_DATA_DIR) must be a path (empty would mean "
        "the current directory), got ''"
    )
    assert list(tmp_path.iterdir()) == []


def test_ca_serve_on_proc_says_what_is_wrong(tmp_path: Path) -> None:
    """`--data-dir /proc/nope` said its parent /proc does not exist."""
    result = run(*SERVE, "--data-dir", "/proc/bulwark-nope", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "does not exist" not in line
    assert "/proc exists but its file system does not let directories be created" in line


def test_certs_list_tells_jwt_svids_from_certificates(
    ca: RunningCa, issued: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JWT-SVIDs were listed as if they were certificates: a KIND column and `--kind`."""
    stub = identity_pb2_grpc.WorkloadIdentityServiceStub(channel(ca.grpc_addr, ca.root_cert_path))
    minted = stub.MintJWTSVID(
        identity_pb2.MintJWTSVIDRequest(audience=["spiffe://cluster.local/ns/demo/sa/backend"]),
        metadata=[("authorization", f"Bearer {ca.mint_token('demo', 'frontend')}")],
        timeout=10,
    )
    jti = jwt.decode(minted.token, options={"verify_signature": False})["jti"]
    url = ["--admin-url", ca.admin_addr]
    capsys.readouterr()
    assert main(["certs", "list", *url]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["SPIFFE", "ID", "KIND", "SERIAL", "TIME", "LEFT", "AUTHENTICATOR"]
    kinds = {row.split()[2]: row.split()[1] for row in rows}
    assert kinds[jti] == "jwt-svid" and "x509-svid" in kinds.values()
    for kind in ("jwt-svid", "x509-svid"):
        assert main(["certs", "list", *url, "--kind", kind, "-o", "json"]) == 0
        items = json.loads(capsys.readouterr().out)
        assert items and {i["kind"] for i in items} == {kind}
        assert (jti in {i["serial"] for i in items}) == (kind == "jwt-svid")
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{ca.admin_url}/v1/certificates?kind=certificate", timeout=5)
    assert bad.value.code == 422
