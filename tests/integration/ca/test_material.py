"""Plugged-in CA material made with openssl, and the start-up errors a bad set gives."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certs.keys import generate_key
from certs.pem import load_certificates
from tests.support.broken import csr_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import REPO, serve_once, start_ca
from tests.support.openssl import make_cacerts, verify

ME = "spiffe://cluster.local/ns/demo/sa/frontend"


def test_plugged_in_root_and_intermediate_give_chains_in_istio_order(tmp_path: Path) -> None:
    cacerts = make_cacerts(tmp_path / "pki")
    ca = start_ca(tmp_path / "ca", "--cacerts-dir", str(cacerts))
    try:
        chain = create_certificate(
            channel(ca.grpc_addr, ca.root_cert_path),
            csr_pem(generate_key(), uris=(ME,)),
            token=ca.mint_token("demo", "frontend"),
        )
    finally:
        ca.stop()
    assert len(chain) == 3
    assert chain[1] == (cacerts / "ca-cert.pem").read_text()
    assert chain[2] == (cacerts / "root-cert.pem").read_text()
    assert ca.root_cert_path.read_text() == (cacerts / "root-cert.pem").read_text()
    (tmp_path / "leaf.pem").write_text(chain[0])
    (tmp_path / "inter.pem").write_text(chain[1])
    for purpose in ("sslclient", "sslserver"):
        result = verify(
            cacerts / "root-cert.pem",
            tmp_path / "leaf.pem",
            purpose,
            untrusted=tmp_path / "inter.pem",
        )
        assert result.returncode == 0, result.stdout + result.stderr
    leaf = load_certificates(chain[0])[0]
    assert leaf.issuer == load_certificates(chain[1])[0].subject


def test_tls_names_style_is_accepted(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_cacerts(pki)
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "tls.crt").write_bytes((pki / "ca-cert.pem").read_bytes())
    (tls / "tls.key").write_bytes((pki / "ca-key.pem").read_bytes())
    (tls / "ca.crt").write_bytes((pki / "root-cert.pem").read_bytes())
    ca = start_ca(tmp_path / "ca", "--cacerts-dir", str(tls))
    try:
        chain = create_certificate(
            channel(ca.grpc_addr, ca.root_cert_path),
            csr_pem(generate_key(), uris=(ME,)),
            token=ca.mint_token("demo", "frontend"),
        )
        assert len(chain) == 3
    finally:
        ca.stop()


def _serve_fails(tmp_path: Path, cacerts: Path) -> str:
    result = serve_once(tmp_path / "ca", "--cacerts-dir", str(cacerts))
    assert result.returncode == 2, result.stderr
    return result.stderr


@pytest.mark.parametrize("missing", ["ca-key.pem", "cert-chain.pem", "root-cert.pem"])
def test_partial_cacerts_names_the_missing_file(tmp_path: Path, missing: str) -> None:
    cacerts = make_cacerts(tmp_path / "pki")
    (cacerts / missing).unlink()
    assert f"missing {missing}" in _serve_fails(tmp_path, cacerts)


def test_mismatched_key_is_named(tmp_path: Path) -> None:
    cacerts = make_cacerts(tmp_path / "pki")
    (cacerts / "ca-key.pem").write_bytes((tmp_path / "pki" / "root-key.pem").read_bytes())
    assert "ca-key.pem does not match the public key of" in _serve_fails(tmp_path, cacerts)


def test_intermediate_from_another_root_is_refused(tmp_path: Path) -> None:
    cacerts = make_cacerts(tmp_path / "pki")
    other = make_cacerts(tmp_path / "other")
    (cacerts / "root-cert.pem").write_bytes((other / "root-cert.pem").read_bytes())
    assert "does not chain to" in _serve_fails(tmp_path, cacerts)


def _refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """A start-up refusal: exit 2, one line on stderr naming what to fix, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _serve_as(
    prefix: tuple[str, ...], data_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`serve_once` run under `prefix` (setpriv dropping root's override of file modes)."""
    cmd = [
        *prefix, sys.executable, "-m", "ca_server", "--data-dir", str(data_dir),
        "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--mtls-grpc-addr", "",
        "--workers", "1", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["cacerts", "self-signed"])
def test_unreadable_ca_key_at_start_is_exit_2_naming_the_file(tmp_path: Path, kind: str) -> None:
    """Issue #13 item 5: a directory at the CA key's path gave a raw IsADirectoryError
    traceback and exit 1 instead of exit 2 with a message."""
    if kind == "cacerts":
        source = make_cacerts(tmp_path / "pki")
        args: tuple[str, ...] = ("--cacerts-dir", str(source))
    else:
        from ca_server.authority.material import DirectoryKeyStore, load_or_create
        from certs.spiffe_id import TrustDomain

        source = tmp_path / "ca" / "ca"
        load_or_create(DirectoryKeyStore(source), TrustDomain("cluster.local"), datetime.now(UTC))
        args = ()
    key = source / "ca-key.pem"
    key.unlink()
    key.mkdir()
    _refused(serve_once(tmp_path / "ca", *args), str(key), "Is a directory", "readable")


def _no_dac_override() -> tuple[str, ...]:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to take root's file-mode override away")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


@pytest.mark.parametrize(
    "case", ["a-file", "missing-parent", "parent-not-writable", "not-writable"]
)
def test_unusable_data_dir_is_exit_2_naming_it(tmp_path: Path, case: str) -> None:
    """Issue #14 item 2 (CA part): an unusable data dir gave a traceback."""
    prefix: tuple[str, ...] = ()
    data_dir = tmp_path / "ca"
    if case == "a-file":
        data_dir.write_text("not a directory\n")
        expected = (str(data_dir), "not a directory")
    elif case == "missing-parent":
        data_dir = tmp_path / "no" / "such" / "ca"
        expected = (str(data_dir), "does not exist")
    elif case == "parent-not-writable":
        (tmp_path / "ro").mkdir(mode=0o500)
        data_dir = tmp_path / "ro" / "ca"
        prefix = _no_dac_override()
        expected = (str(data_dir), "permission denied")
    else:
        data_dir.mkdir(mode=0o500)
        prefix = _no_dac_override()
        expected = (str(data_dir), "permission denied")
    _refused(_serve_as(prefix, data_dir), *expected)


@pytest.mark.parametrize(
    ("where", "fault"),
    [
        ("data-dir", "world-writable"),
        ("data-dir", "group-writable"),
        ("data-dir", "other-owner"),
        ("ca", "world-writable"),
        ("token-issuer", "group-writable"),
        ("token-issuer", "other-owner"),
    ],
)
def test_unsafe_key_directories_stop_the_ca(tmp_path: Path, where: str, fault: str) -> None:
    """Issue #12 (files): the data dir, ca/ and token-issuer/ followed the umask (0777 under
    umask 000) and another local user replaced jwks.json. Now, like sshd's StrictModes, a
    directory others may write to, or owned by another user, stops the CA with exit 2."""
    from ca_server.authn.local_issuer import LocalIssuer
    from ca_server.authority.material import DirectoryKeyStore, load_or_create
    from certs.spiffe_id import TrustDomain

    data_dir = tmp_path / "ca"
    data_dir.mkdir(mode=0o700)
    load_or_create(
        DirectoryKeyStore(data_dir / "ca"), TrustDomain("cluster.local"), datetime.now(UTC)
    )
    LocalIssuer.load_or_create(data_dir)
    target = data_dir if where == "data-dir" else data_dir / where
    if fault == "world-writable":
        target.chmod(0o777)
    elif fault == "group-writable":
        target.chmod(0o770)
    else:
        os.chown(target, 65534, 65534)
    _refused(serve_once(data_dir), str(target), "chmod" if "writable" in fault else "chown")


def test_directories_are_owner_only_under_umask_000(tmp_path: Path) -> None:
    """Issue #12 (files): under umask 000 the CA's directories were 0777."""
    data_dir = tmp_path / "ca"
    old = os.umask(0)
    try:
        ca = start_ca(data_dir)
    finally:
        os.umask(old)
    try:
        for sub in (data_dir, data_dir / "ca", data_dir / "token-issuer"):
            assert stat.S_IMODE(sub.stat().st_mode) == 0o700, sub
        for key in (data_dir / "ca" / "ca-key.pem", data_dir / "token-issuer" / "key.pem"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    finally:
        assert ca.stop() == 0
    # And the CA starts again on what it made.
    start_ca(data_dir).stop()
