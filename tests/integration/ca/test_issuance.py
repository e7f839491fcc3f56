"""Issuance end to end with real tools: openssl-made CSRs, openssl verify, the spiffe library.

Policy rows (empty CSR SANs filled in, the override policy, TTL defaults) run in-process
in test_policy_table.py."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from spiffe import X509Svid

from certs.keys import generate_key, private_key_pem
from certs.pem import load_certificates
from certs.verify import svid_violations
from tests.support import openssl
from tests.support.broken import csr_pem
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa
from tests.support.metrics import metric

ME = "spiffe://cluster.local/ns/demo/sa/frontend"


def test_openssl_csr_gives_a_chain_openssl_and_spiffe_accept(
    shared_ca: RunningCa, tmp_path: Path
) -> None:
    key, csr = openssl.key_and_csr(tmp_path, ME)
    chain = create_certificate(
        channel(shared_ca.grpc_addr, shared_ca.root_cert_path),
        csr.read_bytes(),
        token=shared_ca.mint_token("demo", "frontend"),
        ttl_s=7200,
    )
    assert len(chain) == 2, "self-signed CA answers [leaf, root]"
    assert chain[1] == shared_ca.root_cert_path.read_text()
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_text(chain[0])
    for purpose in ("sslclient", "sslserver"):
        result = openssl.verify(shared_ca.root_cert_path, leaf_path, purpose)
        assert result.returncode == 0, result.stdout + result.stderr
    svid = X509Svid.parse("".join(chain).encode(), key.read_bytes())
    assert str(svid.spiffe_id) == ME
    leaf = load_certificates(chain[0])[0]
    assert svid_violations(leaf) == []
    assert len(leaf.subject) == 0
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert life == timedelta(hours=2, minutes=2), "NotBefore is backdated two minutes"
    assert leaf.serial_number > 0 and leaf.serial_number.bit_length() > 64


def test_tls_1_1_is_refused(shared_ca: RunningCa) -> None:
    host, port = shared_ca.grpc_addr.rsplit(":", 1)
    old = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert old.returncode != 0
    out = old.stdout.decode(errors="replace")
    assert "Cipher is (NONE)" in out and "no peer certificate available" in out
    modern = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-tls1_2", "-alpn", "h2"],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert "Protocol  : TLSv1.2" in modern.stdout.decode(errors="replace"), (
        "TLS 1.2 must still work (the control)"
    )


def test_renewal_with_client_certificate_and_no_token(shared_ca: RunningCa) -> None:
    key = generate_key()
    first = create_certificate(
        channel(shared_ca.grpc_addr, shared_ca.root_cert_path),
        csr_pem(key, uris=(ME,)),
        token=shared_ca.mint_token("demo", "frontend"),
    )
    mtls = channel(
        shared_ca.mtls_addr,
        shared_ca.root_cert_path,
        client_key=private_key_pem(key),
        client_chain="".join(first[:-1]).encode(),
    )
    renewed = create_certificate(mtls, csr_pem(generate_key(), uris=(ME,)))
    assert (
        load_certificates(renewed[0])[0].serial_number
        != load_certificates(first[0])[0].serial_number
    )
    # Istio's cert-chain.pem carries the root too; the CA must accept that presentation.
    with_root = channel(
        shared_ca.mtls_addr,
        shared_ca.root_cert_path,
        client_key=private_key_pem(key),
        client_chain="".join(first).encode(),
    )
    assert len(create_certificate(with_root, csr_pem(generate_key(), uris=(ME,)))) == 2


def test_renewal_with_an_expired_client_certificate_fails(shared_ca: RunningCa) -> None:
    key = generate_key()
    expired = shared_ca.sign_leaf(
        ME, key.public_key(), now=datetime.now(UTC) - timedelta(days=2), ttl=timedelta(hours=1)
    )
    from certs.pem import to_pem

    mtls = channel(
        shared_ca.mtls_addr,
        shared_ca.root_cert_path,
        client_key=private_key_pem(key),
        client_chain=to_pem(expired).encode(),
    )
    issued = metric(shared_ca, "citadel_server_success_cert_issuance_count")
    with pytest.raises(grpc.RpcError) as err:
        create_certificate(mtls, csr_pem(generate_key(), uris=(ME,)), timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert metric(shared_ca, "citadel_server_success_cert_issuance_count") == issued


def test_self_signed_root_persists_with_a_private_key_file(tmp_path: Path) -> None:
    from tests.support.ca_process import start_ca

    ca = start_ca(tmp_path / "ca")
    try:
        first_root = ca.root_cert_path.read_bytes()
        key_mode = stat.S_IMODE(os.stat(ca.data_dir / "ca" / "ca-key.pem").st_mode)
        assert key_mode == 0o600
        assert stat.S_IMODE(os.stat(ca.data_dir / "token-issuer" / "key.pem").st_mode) == 0o600
        ca.restart()
        assert ca.root_cert_path.read_bytes() == first_root
        root = load_certificates(first_root)[0]
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        assert (
            root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
            == "cluster.local"
        )
        assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        assert "trusting the embedded token issuer" in ca.log()
        assert "PRIVATE KEY" not in ca.log()
    finally:
        ca.stop()
