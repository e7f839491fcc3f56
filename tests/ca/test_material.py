"""Plugged-in CA material made with openssl, and the start-up errors a bad set gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from certs.keys import generate_key
from certs.pem import load_certificates
from tests.support.broken import csr_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import serve_once, start_ca
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
