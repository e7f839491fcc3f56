"""Response bodies of the /v1 admin API and their construction from records and certificates."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, Field

from ca_server.ledger import StoredCertificate
from certs.pem import serial_hex, sha256_fingerprint, to_pem


class ErrorBody(BaseModel):
    detail: str


class CertificateSummary(BaseModel):
    seq: int = Field(description="position in the record's hash chain")
    serial: str = Field(description="lowercase hex serial number")
    spiffe_id: str
    namespace: str
    service_account: str
    not_before: datetime
    not_after: datetime
    state: Literal["active", "expired"]
    seconds_left: int = Field(description="seconds until not_after; negative once expired")
    authenticator: str
    recorded_at: datetime


class CertificateDetail(CertificateSummary):
    public_key_sha256: str
    subject: str
    pod_name: str
    pod_uid: str
    peer: str
    cluster_id: str
    csr_sha256: str
    issuer_serial: str
    certificate_pem: str
    prev_hash: str
    row_hash: str


class CertificateList(BaseModel):
    items: list[CertificateSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at end")


class ChainBreakBody(BaseModel):
    seq: int
    serial: str
    reason: str


class VerifyResult(BaseModel):
    ok: bool
    rows_checked: int
    anchor_seq: int = Field(description="last pruned row; the chain is verified from here")
    head_seq: int
    broken: ChainBreakBody | None


class CaCertificateInfo(BaseModel):
    subject: str
    serial: str
    not_before: datetime
    not_after: datetime
    seconds_left: int
    sha256: str
    pem: str


class CaInfo(BaseModel):
    roots: list[CaCertificateInfo]
    intermediates: list[CaCertificateInfo]
    csr_policy: str
    authenticators: list[str]


class SpiffeKey(BaseModel):
    use: Literal["x509-svid"] = "x509-svid"
    kty: str
    crv: str | None = None
    x: str | None = None
    y: str | None = None
    n: str | None = None
    e: str | None = None
    x5c: list[str]


class SpiffeBundle(BaseModel):
    keys: list[SpiffeKey]
    spiffe_refresh_hint: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big")


def spiffe_key(cert: x509.Certificate) -> SpiffeKey:
    """One root as a JWK of the SPIFFE bundle format, with its DER in `x5c`."""
    der = base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers, size = key.public_numbers(), (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        return SpiffeKey(
            kty="EC",
            crv=crv,
            x=_b64url(_int_bytes(numbers.x, size)),
            y=_b64url(_int_bytes(numbers.y, size)),
            x5c=[der],
        )
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return SpiffeKey(
            kty="RSA",
            n=_b64url(_int_bytes(rsa_numbers.n)),
            e=_b64url(_int_bytes(rsa_numbers.e)),
            x5c=[der],
        )
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return SpiffeKey(kty="OKP", crv="Ed25519", x=_b64url(raw), x5c=[der])
    raise ValueError(f"root key type {type(key).__name__} has no JWK form here")


def summary_fields(cert: StoredCertificate, now: datetime) -> dict[str, object]:
    left = int((cert.not_after - now).total_seconds())
    return {
        "seq": cert.seq,
        "serial": cert.serial,
        "spiffe_id": cert.spiffe_id,
        "namespace": cert.namespace,
        "service_account": cert.service_account,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "state": "active" if left > 0 else "expired",
        "seconds_left": left,
        "authenticator": cert.authenticator,
        "recorded_at": cert.recorded_at,
    }


def detail_of(cert: StoredCertificate, now: datetime) -> CertificateDetail:
    return CertificateDetail(
        **summary_fields(cert, now),  # type: ignore[arg-type]
        public_key_sha256=cert.public_key_sha256,
        subject=cert.subject,
        pod_name=cert.pod_name,
        pod_uid=cert.pod_uid,
        peer=cert.peer,
        cluster_id=cert.cluster_id,
        csr_sha256=cert.csr_sha256,
        issuer_serial=cert.issuer_serial,
        certificate_pem=cert.certificate_pem,
        prev_hash=cert.prev_hash,
        row_hash=cert.row_hash,
    )


def ca_info(cert: x509.Certificate, now: datetime) -> CaCertificateInfo:
    return CaCertificateInfo(
        subject=cert.subject.rfc4514_string(),
        serial=serial_hex(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        seconds_left=int((cert.not_valid_after_utc - now).total_seconds()),
        sha256=sha256_fingerprint(cert),
        pem=to_pem(cert),
    )
