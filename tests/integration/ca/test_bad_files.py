"""A file a `ca serve` flag names that is missing, unreadable or not what the flag needs:
the CA does not start (issue 22 item 11). Exit 2 and one line on stderr naming the flag and
the file, no traceback, before anything else is printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certs.keys import generate_key, private_key_pem
from certs.pem import to_pem
from certs.profile import self_signed_root
from certs.spiffe_id import TrustDomain
from tests.support.ca_process import serve_once

MISSING = "/nonexistent/bulwark-test-file"
ISSUER = ("--jwt-issuer", "https://issuer.example")


def _files(tmp: Path) -> dict[str, Path]:
    files = {
        "garbage": tmp / "garbage.pem",
        "not-json": tmp / "not.json",
        "no-keys": tmp / "no-keys.json",
        "empty": tmp / "empty-token",
        "list": tmp / "list.json",
        "dir": tmp / "a-directory",
    }
    files["garbage"].write_text("garbage\n")
    files["not-json"].write_text("{not json")
    files["no-keys"].write_text(json.dumps({"keys": []}))
    files["empty"].write_text("\n")
    files["list"].write_text("[]")
    files["dir"].mkdir()
    return files


def _web(cert: str, key: str) -> tuple[str, ...]:
    return (
        "--bundle-endpoint-addr", "127.0.0.1:0", "--bundle-endpoint-profile", "https_web",
        "--bundle-endpoint-cert", cert, "--bundle-endpoint-key", key,
    )  # fmt: skip


def _peer(bundle: str) -> tuple[str, ...]:
    return ("--federate-with", f"peer.test=https://127.0.0.1:9/bundle,bundle={bundle}")


Args = Callable[[dict[str, Path]], tuple[str, ...]]
CASES: list[tuple[str, Args, str, str]] = [
    # (case, flags, the flag named, what the line says)
    ("jwks missing", lambda f: (*ISSUER, "--jwks-file", MISSING), "--jwks-file", "No such file"),
    ("jwks a directory", lambda f: (*ISSUER, "--jwks-file", str(f["dir"])), "--jwks-file", "Is a directory"),
    ("jwks not JSON", lambda f: (*ISSUER, "--jwks-file", str(f["not-json"])), "--jwks-file", "not JSON"),
    ("jwks not an object", lambda f: (*ISSUER, "--jwks-file", str(f["list"])), "--jwks-file", "not a JSON object"),
    ("jwks without keys", lambda f: (*ISSUER, "--jwks-file", str(f["no-keys"])), "--jwks-file", "no usable signing key"),
    ("admin token missing", lambda f: ("--admin-token-file", MISSING), "--admin-token-file", "No such file"),
    ("admin token empty", lambda f: ("--admin-token-file", str(f["empty"])), "--admin-token-file", "empty"),
    ("admin token a directory", lambda f: ("--admin-token-file", str(f["dir"])), "--admin-token-file", "Is a directory"),
    ("cacerts missing", lambda f: ("--cacerts-dir", MISSING), "--cacerts-dir", "not a directory"),
    ("cacerts empty", lambda f: ("--cacerts-dir", str(f["dir"])), "directory", "holds neither"),
    ("kubeconfig missing", lambda f: ("--kubeconfig", MISSING), "--kubeconfig", "not a readable file"),
    ("kubeconfig garbage", lambda f: ("--kubeconfig", str(f["garbage"])), "--kubeconfig", "not a kubeconfig"),
    ("kubeconfig not YAML", lambda f: ("--kubeconfig", str(f["not-json"])), "--kubeconfig", "not"),
    ("bundle endpoint cert missing", lambda f: _web(MISSING, str(f["garbage"])), "--bundle-endpoint-cert", "No such file"),
    ("bundle endpoint cert garbage", lambda f: _web(str(f["garbage"]), str(f["garbage"])), "--bundle-endpoint-cert", "BEGIN CERTIFICATE"),
    ("federation bundle missing", lambda f: _peer(MISSING), "--federate-with peer.test", "No such file"),
    ("federation bundle not JSON", lambda f: _peer(str(f["not-json"])), "--federate-with peer.test", "not JSON"),
    ("record directory missing", lambda f: ("--record", f"sqlite:///{MISSING}/record.db"), "--record", "does not exist"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("case", "args", "flag", "said"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_file_flag_is_exit_2_with_one_line_naming_flag_and_file(
    tmp_path: Path, case: str, args: Args, flag: str, said: str
) -> None:
    files = _files(tmp_path)
    argv = args(files)
    result = serve_once(tmp_path / "ca", *argv)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("bulwark ca serve: ") and "Traceback" not in result.stderr
    assert flag in line and said in line, line
    paths = [
        a.split("bundle=")[-1] for a in argv if a.startswith(("/", "sqlite:")) or "bundle=" in a
    ]
    assert any(path in line for path in paths), f"names the file: {line}"


def test_a_bundle_endpoint_key_that_is_not_the_certificates_is_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "other-key.pem"
    root = self_signed_root(
        key=generate_key(), trust_domain=TrustDomain("web.example"), now=datetime.now(UTC)
    )
    cert.write_text(to_pem(root))
    key.write_bytes(private_key_pem(generate_key()))
    result = serve_once(tmp_path / "ca", *_web(str(cert), str(key)))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"--bundle-endpoint-key {key}" in lines[0] and "not the key" in lines[0], lines
