"""Istio's own CA client (security/pkg/nodeagent/caclient/providers/citadel) against Bulwark.

istio-csr runs the code path of istio-agent: Istio's token plugin reads the token file, the
citadel client dials the CA over TLS with the ClusterID header and Istio's CA retry
interceptor, and Istio's secret cache makes the CSR with security/pkg/pki/util and refuses a
chain of one certificate. It then checks the chain with Istio's pkiutil.VerifyCertificate;
the tests check it again with openssl and count the CA's requests on /metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.ca_process import RunningCa
from tests.support.interop import (
    IstioBinaries,
    metric,
    openssl_verify,
    run_istio_csr,
    spiffe_ids,
    write_token,
)

WEB = "spiffe://cluster.local/ns/demo/sa/web"
CSR_COUNT = "citadel_server_csr_count"


@pytest.mark.parametrize("ecdsa", [False, True], ids=["rsa2048", "ecdsa-p256"])
def test_istio_client_accepts_chain_for_token_identity(
    istio: IstioBinaries, strict_ca: RunningCa, token_file: Path, tmp_path: Path, ecdsa: bool
) -> None:
    write_token(token_file, strict_ca.mint_token("demo", "web"))
    before = metric(strict_ca.admin_url, CSR_COUNT)

    result = run_istio_csr(
        istio,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=token_file,
        namespace="demo",
        service_account="web",
        ecdsa=ecdsa,
        ttl="1h",
    )

    assert result.ok, f"{result.error}\n{result.log}"
    assert "pkiutil.VerifyCertificate" in result.verified
    assert len(result.chain) >= 2
    assert spiffe_ids(result.chain[0]) == [WEB]
    root_pem = strict_ca.root_cert_path.read_text()
    # Istio takes the last element of the response as the root it hands to Envoy.
    assert x509.load_pem_x509_certificate(result.root.encode()) == x509.load_pem_x509_certificate(
        root_pem.encode()
    )
    openssl_verify("".join(result.chain), strict_ca.root_cert_path, tmp_path / "verify")
    leaf = x509.load_pem_x509_certificate(result.chain[0].encode())
    lifetime = leaf.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(minutes=55) < lifetime <= timedelta(hours=1)
    assert metric(strict_ca.admin_url, CSR_COUNT) == before + 1


def test_strict_policy_denies_other_identity_and_istio_does_not_retry(
    istio: IstioBinaries, strict_ca: RunningCa, token_file: Path
) -> None:
    write_token(token_file, strict_ca.mint_token("demo", "web"))
    before = metric(strict_ca.admin_url, CSR_COUNT)

    result = run_istio_csr(
        istio,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=token_file,
        namespace="demo",
        service_account="admin",  # the CSR asks for an identity the token does not prove
    )

    assert not result.ok
    assert result.grpc_code == "PermissionDenied", result.error
    assert "spiffe://cluster.local/ns/demo/sa/admin" in result.error
    # CARetryInterceptor retries only transient codes: exactly one request reached the CA,
    # and Istio's retry hook (which logs every retry) never ran.
    assert metric(strict_ca.admin_url, CSR_COUNT) == before + 1
    assert "ca request failed, starting attempt" not in result.log


def test_missing_token_file_sends_no_header_and_is_unauthenticated(
    istio: IstioBinaries, strict_ca: RunningCa, tmp_path: Path
) -> None:
    before = metric(strict_ca.admin_url, CSR_COUNT)

    result = run_istio_csr(
        istio,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=tmp_path / "absent-token",  # Istio's token plugin then adds no header
        namespace="demo",
        service_account="web",
    )

    assert not result.ok
    assert result.grpc_code == "Unauthenticated", result.error
    assert metric(strict_ca.admin_url, CSR_COUNT) == before + 1


def test_token_of_another_trust_domain_issuer_is_unauthenticated(
    istio: IstioBinaries, strict_ca: RunningCa, override_ca: RunningCa, token_file: Path
) -> None:
    # A well-formed token signed by another CA's issuer must not be accepted.
    write_token(token_file, override_ca.mint_token("demo", "web"))

    result = run_istio_csr(
        istio,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=token_file,
        namespace="demo",
        service_account="web",
    )

    assert not result.ok
    assert result.grpc_code == "Unauthenticated", result.error


def test_override_policy_signs_the_callers_identity_like_istio(
    istio: IstioBinaries, override_ca: RunningCa, token_file: Path, tmp_path: Path
) -> None:
    write_token(token_file, override_ca.mint_token("demo", "web"))

    result = run_istio_csr(
        istio,
        ca_addr=override_ca.grpc_addr,
        root_cert=override_ca.root_cert_path,
        token_file=token_file,
        namespace="demo",
        service_account="admin",
        expect_identity=WEB,
    )

    assert result.ok, f"{result.error}\n{result.log}"
    assert spiffe_ids(result.chain[0]) == [WEB]
    openssl_verify("".join(result.chain), override_ca.root_cert_path, tmp_path / "verify")


def test_wrong_root_fails_the_tls_handshake(
    istio: IstioBinaries, strict_ca: RunningCa, override_ca: RunningCa, token_file: Path
) -> None:
    write_token(token_file, strict_ca.mint_token("demo", "web"))

    result = run_istio_csr(
        istio,
        ca_addr=strict_ca.grpc_addr,
        root_cert=override_ca.root_cert_path,  # not the root that signed strict_ca's server cert
        token_file=token_file,
        namespace="demo",
        service_account="web",
    )

    assert not result.ok
    assert result.grpc_code == "Unavailable", result.error
    assert "certificate" in result.error


def test_renewal_with_prov_cert_over_mtls(
    istio: IstioBinaries, strict_ca: RunningCa, token_file: Path, tmp_path: Path
) -> None:
    """PROV_CERT: Istio's client presents the certificate it got (no token) on the mTLS port."""
    write_token(token_file, strict_ca.mint_token("demo", "web"))
    prov = tmp_path / "prov"
    prov.mkdir()
    first = run_istio_csr(
        istio,
        ca_addr=strict_ca.grpc_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=token_file,
        namespace="demo",
        service_account="web",
        output_certs=prov,  # Istio's secret cache writes key.pem, cert-chain.pem, root-cert.pem
    )
    assert first.ok, first.error
    assert {p.name for p in prov.iterdir()} >= {"key.pem", "cert-chain.pem", "root-cert.pem"}

    renewed = run_istio_csr(
        istio,
        ca_addr=strict_ca.mtls_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=None,
        namespace="demo",
        service_account="web",
        prov_cert=prov,
    )

    assert renewed.ok, f"{renewed.error}\n{renewed.log}"
    assert spiffe_ids(renewed.chain[0]) == [WEB]
    assert renewed.chain[0] != first.chain[0]
    openssl_verify("".join(renewed.chain), strict_ca.root_cert_path, tmp_path / "verify")

    # Without PROV_CERT and without a token the mTLS port refuses the handshake.
    refused = run_istio_csr(
        istio,
        ca_addr=strict_ca.mtls_addr,
        root_cert=strict_ca.root_cert_path,
        token_file=None,
        namespace="demo",
        service_account="web",
    )
    assert not refused.ok
    assert refused.grpc_code == "Unavailable", refused.error
