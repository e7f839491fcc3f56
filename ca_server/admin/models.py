"""Response bodies of the /v1 admin API and their construction from records and certificates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from cryptography import x509
from pydantic import BaseModel, Field, create_model

from ca_server.kube.status import ClusterStatus
from ca_server.record.ledger import StoredCertificate
from ca_server.record.ledger.shape import ENTRY_COLUMNS
from certs.pem import serial_hex, sha256_fingerprint, to_pem
from certs.spiffe_bundle import x509_authority


class ErrorBody(BaseModel):
    detail: str


CertificateState = Literal["active", "expired"]


def _entry_fields(*, summary: bool) -> dict[str, Any]:
    """Pydantic field definitions of the record's columns shown in listings (or the rest)."""
    return {
        c.name: (datetime if c.kind == "epoch" else str, Field(description=c.description))
        for c in ENTRY_COLUMNS
        if c.summary == summary
    }


# Both models come from the one definition of a record's fields (`IssuedCertificate`).
CertificateSummary: type[BaseModel] = create_model(
    "CertificateSummary",
    seq=(int, Field(description="position in the record's hash chain")),
    **_entry_fields(summary=True),
    state=(CertificateState, Field(description="active until not_after, then expired")),
    seconds_left=(int, Field(description="seconds until not_after; negative once expired")),
    recorded_at=(datetime, Field(description="when the record committed it")),
)
CertificateDetail: type[BaseModel] = create_model(
    "CertificateDetail",
    __base__=CertificateSummary,
    **_entry_fields(summary=False),
    prev_hash=(str, Field(description="row_hash of the previous row in the chain")),
    row_hash=(str, Field(description="SHA-256 over prev_hash and this row's fields")),
)


class CertificateList(BaseModel):
    items: list[CertificateSummary]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at end")


class ChainBreakBody(BaseModel):
    seq: int
    serial: str
    reason: str


class SegmentBreakBody(BaseModel):
    first_seq: int = Field(description="first row of the segment the CA continued on")
    prev_seq: int = Field(description="the row the segment chains from")
    reason: str = Field(description="the damage found at start, when the operator continued")
    started_at: datetime
    damage: ChainBreakBody | None = Field(description="what the stretch before it shows now")


class VerifyResult(BaseModel):
    ok: bool = Field(description="the chain after the last segment break verifies")
    rows_checked: int
    anchor_seq: int = Field(description="last pruned row; the chain is verified from here")
    head_seq: int
    broken: ChainBreakBody | None
    segments: list[SegmentBreakBody] = Field(
        default_factory=list, description="where the record was continued after damage"
    )


class CaCertificateInfo(BaseModel):
    subject: str
    serial: str
    not_before: datetime
    not_after: datetime
    seconds_left: int
    sha256: str
    pem: str


class ClusterInfo(BaseModel):
    cluster_id: str = Field(description="the cluster ID requests name in `clusterid`")
    local: bool = Field(description="the CA's own cluster (--cluster-id), not a remote secret's")
    source: str = Field(description="`local`, or the remote secret that defines it")
    server: str = Field(description="its API server URL, when known")
    reachable: bool | None = Field(
        description="whether its API server answered the last probe (null: not probed yet)"
    )
    last_sync: datetime | None = Field(description="when the CA last reached its API server")
    error: str = Field(description="why it is unusable or unreachable; empty when fine")


class SigningKeyInfo(BaseModel):
    """Where the CA's signing key lives; never anything secret."""

    storage: Literal["pkcs11", "file", "kubernetes-secret"] = Field(
        description="pkcs11: in an HSM; file: a 0600 file; kubernetes-secret: istio-ca-secret"
    )
    token: str | None = Field(default=None, description="PKCS#11 token label")
    object: str | None = Field(default=None, description="PKCS#11 object label of the key")
    id: str | None = Field(default=None, description="PKCS#11 CKA_ID of the key, hex")
    key_type: str = Field(description="e.g. ECDSA P-256, RSA 3072")


class CaInfo(BaseModel):
    roots: list[CaCertificateInfo]
    intermediates: list[CaCertificateInfo]
    csr_policy: str
    authenticators: list[str]
    signing_key: SigningKeyInfo | None = None
    clusters: list[ClusterInfo] = Field(
        default_factory=list,
        description="with Kubernetes: the own cluster, then the remote secrets' (docs/MULTICLUSTER.md)",
    )


class SpiffeKey(BaseModel):
    use: Literal["x509-svid", "jwt-svid"] = "x509-svid"
    kty: str
    crv: str | None = None
    x: str | None = None
    y: str | None = None
    n: str | None = None
    e: str | None = None
    kid: str | None = None  # jwt-svid keys
    x5c: list[str] | None = None  # x509-svid keys: the root's DER


class SpiffeBundle(BaseModel):
    keys: list[SpiffeKey]
    spiffe_sequence: int | None = None
    spiffe_refresh_hint: int


def spiffe_key(cert: x509.Certificate) -> SpiffeKey:
    """One root as a JWK of the SPIFFE bundle format (`certs.spiffe_bundle` writes it)."""
    return SpiffeKey.model_validate(x509_authority(cert))


def summary_fields(cert: StoredCertificate, now: datetime) -> dict[str, object]:
    """The listing fields of `cert` as seen at `now`."""
    left = int((cert.not_after - now).total_seconds())
    shown = {c.name: getattr(cert, c.name) for c in ENTRY_COLUMNS if c.summary}
    return {
        "seq": cert.seq,
        **shown,
        "state": "active" if left > 0 else "expired",
        "seconds_left": left,
        "recorded_at": cert.recorded_at,
    }


def summary_of(cert: StoredCertificate, now: datetime) -> BaseModel:
    return CertificateSummary(**summary_fields(cert, now))


def detail_of(cert: StoredCertificate, now: datetime) -> BaseModel:
    rest = {c.name: getattr(cert, c.name) for c in ENTRY_COLUMNS if not c.summary}
    return CertificateDetail(
        **summary_fields(cert, now), **rest, prev_hash=cert.prev_hash, row_hash=cert.row_hash
    )


def cluster_info(status: ClusterStatus) -> ClusterInfo:
    synced = status.last_sync
    return ClusterInfo(
        cluster_id=status.cluster_id,
        local=status.local,
        source=status.source,
        server=status.server,
        reachable=status.reachable,
        last_sync=datetime.fromtimestamp(synced, UTC) if synced is not None else None,
        error=status.error,
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
