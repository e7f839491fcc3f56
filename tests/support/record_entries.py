"""Certificate entries for record tests: real certificates, varied workloads."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_server.record.entry import IssuedCertificate
from certs.pem import to_pem

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


@cache
def sample_pem() -> str:
    """One real (self-signed, test-only) certificate's PEM, shared by all entries."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bulwark-test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(BASE_TIME)
        .not_valid_after(BASE_TIME + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return to_pem(cert)


def make_entry(
    *,
    namespace: str = "default",
    service_account: str = "web",
    not_after: datetime | None = None,
    lifetime: timedelta = timedelta(hours=24),
    serial: str | None = None,
) -> IssuedCertificate:
    end = not_after or BASE_TIME + lifetime
    return IssuedCertificate(
        serial=serial or format(secrets.randbits(127) | (1 << 126), "x"),
        spiffe_id=f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}",
        namespace=namespace,
        service_account=service_account,
        not_before=end - lifetime,
        not_after=end,
        public_key_sha256=secrets.token_hex(32),
        authenticator="jwt",
        subject=f"system:serviceaccount:{namespace}:{service_account}",
        pod_name=f"{service_account}-pod",
        pod_uid="",
        peer="127.0.0.1:5555",
        cluster_id="Kubernetes",
        csr_sha256=secrets.token_hex(32),
        issuer_serial="1f",
        certificate_pem=sample_pem(),
    )
