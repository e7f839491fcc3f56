"""The admin API's /v1 routes: the issuance record, the trust bundle and the CA's state.

`build_admin_router` takes narrow values (a record reader, a callable giving the
current CA certificates, the CSR policy and authenticator names, the admin
token) so the admin app can mount it without handing over the whole server.
Record routes need `Authorization: Bearer <admin token>` unless the admin port
is bound to loopback only; a missing or wrong token gets a 401 that says nothing
more. Query mistakes get 422 with a message naming the parameter.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Annotated, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ca_server.config import CaConfig
from ca_server.ledger import (
    CertificatePage,
    CertificateQuery,
    InvalidQuery,
    LedgerReadError,
    Pruner,
    StoredCertificate,
    VerifyReport,
    default_record_url,
    open_reader,
    parse_duration,
    parse_record_url,
)
from ca_server.material import CaMaterial
from certs.pem import bundle_pem, serial_hex, sha256_fingerprint, to_pem

log = logging.getLogger(__name__)
PEM_MEDIA_TYPE = "application/x-pem-file"
PRUNE_INTERVAL = timedelta(minutes=10)
PRUNE_BATCH = 1000
DEFAULT_REFRESH_HINT = timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class CaCertificates:
    """The CA's current trust anchors and the chain between its signing key and them."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()  # signing certificate first


class CertificateReader(Protocol):
    def list(self, query: CertificateQuery) -> CertificatePage: ...
    def get(self, serial: str) -> StoredCertificate | None: ...
    def verify(self) -> VerifyReport: ...


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


def _summary_fields(cert: StoredCertificate, now: datetime) -> dict[str, object]:
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


def _detail(cert: StoredCertificate, now: datetime) -> CertificateDetail:
    return CertificateDetail(
        **_summary_fields(cert, now),  # type: ignore[arg-type]
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


def _ca_info(cert: x509.Certificate, now: datetime) -> CaCertificateInfo:
    return CaCertificateInfo(
        subject=cert.subject.rfc4514_string(),
        serial=serial_hex(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        seconds_left=int((cert.not_valid_after_utc - now).total_seconds()),
        sha256=sha256_fingerprint(cert),
        pem=to_pem(cert),
    )


UNAUTHORIZED = HTTPException(
    status_code=401,
    detail="a valid admin bearer token is required",
    headers={"WWW-Authenticate": "Bearer"},
)
AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "missing or wrong admin token"},
    503: {"model": ErrorBody, "description": "the issuance record is unavailable"},
}
_bearer = HTTPBearer(auto_error=False, description="contents of --admin-token-file")


def _admin_guard(
    admin_token: str | None, loopback: bool
) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    expected = admin_token.encode() if admin_token is not None else None

    def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if loopback:
            return
        presented = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest runs in time independent of where the tokens differ.
        if expected is None or not hmac.compare_digest(presented, expected):
            raise UNAUTHORIZED

    return require_admin


def _invalid(exc: InvalidQuery) -> HTTPException:
    return HTTPException(status_code=422, detail=str(exc))


def _unavailable(exc: LedgerReadError) -> HTTPException:
    return HTTPException(status_code=503, detail=str(exc))


def build_admin_router(
    *,
    reader: CertificateReader,
    ca_certificates: Callable[[], CaCertificates],
    csr_policy: str,
    authenticators: Sequence[str],
    admin_token: str | None,
    loopback: bool,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    refresh_hint: timedelta = DEFAULT_REFRESH_HINT,
) -> APIRouter:
    """The /v1 routes, bound to the given reader, CA material and access policy."""
    router = APIRouter(prefix="/v1", tags=["v1"])
    guard = Depends(_admin_guard(admin_token, loopback))
    names = list(authenticators)

    @router.get(
        "/certificates",
        response_model=CertificateList,
        responses=AUTH_RESPONSES
        | {422: {"model": ErrorBody, "description": "a filter, limit or cursor is malformed"}},
        dependencies=[guard],
        summary="List recorded certificates, newest first",
    )
    def list_certificates(
        namespace: str | None = None,
        service_account: str | None = None,
        spiffe_id: str | None = None,
        expiring_within: Annotated[
            str | None,
            Query(
                description="active and expiring within this: seconds, or 90s, 30m, 2h, 1h30m, 7d",
                examples=["2h"],
            ),
        ] = None,
        state: Literal["active", "expired"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> CertificateList:
        now = clock()
        try:
            within = parse_duration(expiring_within) if expiring_within is not None else None
            query = CertificateQuery(
                namespace=namespace,
                service_account=service_account,
                spiffe_id=spiffe_id,
                expiring_within=within,
                state=state,
                limit=limit,
                cursor=cursor,
            )
            page = reader.list(query)
        except InvalidQuery as exc:
            raise _invalid(exc) from exc
        except LedgerReadError as exc:
            raise _unavailable(exc) from exc
        items = [CertificateSummary(**_summary_fields(c, now)) for c in page.items]  # type: ignore[arg-type]
        return CertificateList(items=items, next_cursor=page.next_cursor)

    @router.get(
        "/certificates/{serial}",
        response_model=CertificateDetail,
        responses=AUTH_RESPONSES
        | {
            404: {"model": ErrorBody, "description": "no certificate with this serial"},
            422: {"model": ErrorBody, "description": "the serial is not hexadecimal"},
        },
        dependencies=[guard],
        summary="One recorded certificate with its PEM",
    )
    def get_certificate(
        serial: Annotated[str, Path(description="hex serial; case and colons ignored")],
    ) -> CertificateDetail:
        try:
            found = reader.get(serial)
        except InvalidQuery as exc:
            raise _invalid(exc) from exc
        except LedgerReadError as exc:
            raise _unavailable(exc) from exc
        if found is None:
            raise HTTPException(404, detail=f"no certificate with serial {serial} in the record")
        return _detail(found, clock())

    @router.get(
        "/record/verify",
        response_model=VerifyResult,
        responses=AUTH_RESPONSES,
        dependencies=[guard],
        summary="Recompute the record's hash chain",
    )
    def verify_record() -> VerifyResult:
        try:
            report = reader.verify()
        except LedgerReadError as exc:
            raise _unavailable(exc) from exc
        broken = report.broken
        return VerifyResult(
            ok=report.ok,
            rows_checked=report.rows_checked,
            anchor_seq=report.anchor_seq,
            head_seq=report.head_seq,
            broken=ChainBreakBody(seq=broken.seq, serial=broken.serial, reason=broken.reason)
            if broken
            else None,
        )

    @router.get(
        "/trust-bundle",
        response_model=SpiffeBundle,
        response_model_exclude_none=True,
        responses={
            200: {
                "content": {PEM_MEDIA_TYPE: {"schema": {"type": "string"}}},
                "description": "PEM roots, or the SPIFFE bundle JSON",
            }
        },
        summary="The trust bundle (PEM, or SPIFFE bundle JSON with format=spiffe)",
    )
    def trust_bundle(format: Literal["pem", "spiffe"] = "pem") -> Response | SpiffeBundle:
        roots = ca_certificates().roots
        if format == "pem":
            return Response(content=bundle_pem(roots), media_type=PEM_MEDIA_TYPE)
        return SpiffeBundle(
            keys=[spiffe_key(r) for r in roots],
            spiffe_refresh_hint=int(refresh_hint.total_seconds()),
        )

    @router.get("/ca", response_model=CaInfo, summary="Roots, intermediates and CA policy")
    def ca_state() -> CaInfo:
        material, now = ca_certificates(), clock()
        return CaInfo(
            roots=[_ca_info(c, now) for c in material.roots],
            intermediates=[_ca_info(c, now) for c in material.intermediates],
            csr_policy=csr_policy,
            authenticators=names,
        )

    return router


def is_loopback(host: str) -> bool:
    """True when `host` (an admin bind address) accepts connections from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_admin_token(path: FsPath | None) -> str | None:
    """The admin bearer token from `--admin-token-file`, or None when no file is configured."""
    if path is None:
        return None
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"admin token file {path} is empty")
    return token


def ca_certificates_of(material: CaMaterial) -> CaCertificates:
    """The roots, and the signing certificate plus chain when it is not itself a root."""
    roots = tuple(material.roots)
    seen = {sha256_fingerprint(r) for r in roots}
    intermediates = []
    for cert in (material.signing_cert, *material.chain):
        if sha256_fingerprint(cert) not in seen:
            seen.add(sha256_fingerprint(cert))
            intermediates.append(cert)
    return CaCertificates(roots=roots, intermediates=tuple(intermediates))


def authenticator_names(config: CaConfig) -> list[str]:
    """The authenticators a CA with `config` runs, in the order it tries them."""
    names = ["client-cert"]
    if config.kubeconfig is not None:
        names.append("tokenreview")
    if config.uses_local_issuer:
        names.append(f"jwt (local issuer in {config.data_dir})")
    elif config.jwt_issuer is not None:
        names.append(f"jwt (issuer {config.jwt_issuer})")
    return names


def admin_router_for(
    config: CaConfig, material: Callable[[], CaMaterial], *, admin_host: str
) -> tuple[APIRouter, Callable[[], None]]:
    """The supervisor's glue: open the record reader and pruner, build the /v1 router.

    Returns the router and a function that closes the reader and stops the pruner.
    """
    url = config.record or default_record_url(config.data_dir)
    reader = open_reader(url)
    pruner: Pruner | None = None
    if config.record_retention is not None:
        pruner = Pruner(
            parse_record_url(url),
            max_age=config.record_retention,
            interval=PRUNE_INTERVAL,
            batch_size=PRUNE_BATCH,
            clock=lambda: datetime.now(UTC),
        ).start()
    loopback = is_loopback(admin_host)
    token = read_admin_token(config.admin_token_file)
    if token is None and not loopback:
        log.warning(
            "admin API on %s without --admin-token-file: record routes refuse all", admin_host
        )
    router = build_admin_router(
        reader=reader,
        ca_certificates=lambda: ca_certificates_of(material()),
        csr_policy=config.csr_san_policy,
        authenticators=authenticator_names(config),
        admin_token=token,
        loopback=loopback,
    )

    def close() -> None:
        if pruner is not None:
            pruner.stop()
        reader.close()

    return router, close
