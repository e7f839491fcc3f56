"""The /v1 routes: the issuance record (admin token off loopback), trust bundle and CA state."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from cryptography import x509
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from ca_server.admin.models import (
    CaInfo,
    CertificateDetail,
    CertificateList,
    ErrorBody,
    SigningKeyInfo,
    SpiffeBundle,
    VerifyResult,
    ca_info,
    cluster_info,
    detail_of,
    summary_of,
)
from ca_server.kube.status import ClusterStatus
from ca_server.record.ledger import (
    CertificatePage,
    CertificateQuery,
    InvalidQuery,
    LedgerReadError,
    StoredCertificate,
    VerifyReport,
    parse_duration,
    parse_timestamp,
)
from ca_server.spiffe.bundle import own_bundle
from certs.pem import bundle_pem

PEM_MEDIA_TYPE = "application/x-pem-file"
DEFAULT_REFRESH_HINT = timedelta(minutes=5)
Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True, kw_only=True)
class CaCertificates:
    """The CA's current trust anchors and the chain between its signing key and them."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()  # signing certificate first
    signing_key: dict[str, str | None] | None = None  # `key_location` of the signing key


class CertificateReader(Protocol):
    def list(self, query: CertificateQuery) -> CertificatePage: ...
    def get(self, serial: str) -> StoredCertificate | None: ...
    def verify(self) -> VerifyReport: ...


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


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_IN_PATH = re.compile(r"\s+in\s+[^\s)]+")  # "local issuer in ./data"
_PATH = re.compile(r"(?<![\w:/.])/[^\s),]*")


def _host_name(header: str) -> str:
    """The host of a Host header without its port (`[::1]:8080` -> `[::1]`)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def require_local_host(request: Request) -> None:
    """On a connection to a loopback address, only a loopback Host is served.

    A browser page whose DNS name was rebound to 127.0.0.1 sends its own name in Host;
    refusing it keeps the admin API from being read through the browser (DNS rebinding).
    """
    server = request.scope.get("server")
    if not server or not _is_loopback_address(str(server[0])):
        return
    host = request.headers.get("host", "")
    if _host_name(host.strip().lower()) not in LOCAL_HOSTS:
        raise HTTPException(
            status_code=400,
            detail="the admin API on a loopback address answers only Host localhost,"
            " 127.0.0.1 or [::1] (DNS rebinding protection)",
        )


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def public_name(name: str) -> str:
    """An authenticator's description without filesystem paths, for unauthenticated callers."""
    return _PATH.sub("<path>", _IN_PATH.sub(" in <path>", name))


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


def _stamp(text: str | None, name: str) -> datetime | None:
    return parse_timestamp(text, name) if text is not None else None


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
    clock: Clock = lambda: datetime.now(UTC),
    refresh_hint: timedelta = DEFAULT_REFRESH_HINT,
    spiffe_bundle: Callable[[], dict[str, Any]] | None = None,
    federated_bundles: Callable[[], dict[str, bytes]] = dict,
    clusters: Callable[[], Sequence[ClusterStatus]] = list,
) -> APIRouter:
    """The /v1 routes, bound to the given reader, CA material and access policy.

    `spiffe_bundle` is the CA's bundle document (`ca_server.spiffe.bundle.BundleSource`, with the
    JWT keys); without it the bundle holds the roots only, built by the same builder.
    `clusters` are the clusters a CA on Kubernetes serves (none without Kubernetes).
    """
    router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_local_host)])
    _record_routes(router, reader, Depends(_admin_guard(admin_token, loopback)), clock)
    if spiffe_bundle is None:

        def roots_only() -> dict[str, Any]:
            roots = ca_certificates().roots
            own = own_bundle(roots=roots, jwt_keys=(), sequence=0, refresh_hint=refresh_hint)
            return own.document()

        spiffe_bundle = roots_only
    _ca_routes(
        router,
        CaState(ca_certificates, csr_policy, list(authenticators), clusters),
        clock,
        spiffe_bundle,
    )
    _federation_route(router, federated_bundles)
    return router


def _federation_route(router: APIRouter, bundles: Callable[[], dict[str, bytes]]) -> None:
    @router.get(
        "/federated-bundles",
        response_model=dict[str, dict[str, Any]],
        summary="The kept bundle of every federated trust domain, by trust domain name",
    )
    def federated() -> dict[str, dict[str, Any]]:
        # As kept: checked when fetched and written by certs.spiffe_bundle, not re-modelled here.
        return {td: json.loads(doc) for td, doc in bundles().items()}


def _record_routes(
    router: APIRouter, reader: CertificateReader, guard: DependsParam, clock: Clock
) -> None:
    _list_route(router, reader, guard, clock)
    _get_route(router, reader, guard, clock)
    _verify_route(router, reader, guard)


def _list_route(
    router: APIRouter, reader: CertificateReader, guard: DependsParam, clock: Clock
) -> None:
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
        cluster_id: Annotated[
            str | None,
            Query(
                description="the cluster the request named (`clusterid`; the CA's own when none)"
            ),
        ] = None,
        expiring_within: Annotated[
            str | None,
            Query(
                description="active and expiring within this: seconds, or a Go duration such as 90s, 30m, 1h30m, 500ms, plus d and w",
                examples=["2h"],
            ),
        ] = None,
        issued_since: Annotated[
            str | None,
            Query(
                description="recorded at or after this RFC 3339 time",
                examples=["2026-01-02T03:04:05Z"],
            ),
        ] = None,
        issued_before: Annotated[
            str | None,
            Query(
                description="recorded before this RFC 3339 time", examples=["2026-01-03T00:00:00Z"]
            ),
        ] = None,
        state: Literal["active", "expired"] | None = None,
        kind: Annotated[
            Literal["x509-svid", "jwt-svid"] | None,
            Query(description="only X.509 certificates (x509-svid) or only JWT-SVIDs (jwt-svid)"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> CertificateList:
        now = clock()
        try:
            within = (
                parse_duration(expiring_within, "expiring_within")
                if expiring_within is not None
                else None
            )
            query = CertificateQuery(
                namespace=namespace,
                service_account=service_account,
                spiffe_id=spiffe_id,
                cluster_id=cluster_id,
                expiring_within=within,
                issued_since=_stamp(issued_since, "issued_since"),
                issued_before=_stamp(issued_before, "issued_before"),
                state=state,
                kind=kind,
                limit=limit,
                cursor=cursor,
            )
            page = reader.list(query)
        except InvalidQuery as exc:
            raise _invalid(exc) from exc
        except LedgerReadError as exc:
            raise _unavailable(exc) from exc
        items = [summary_of(c, now) for c in page.items]
        return CertificateList(items=items, next_cursor=page.next_cursor)


def _get_route(
    router: APIRouter, reader: CertificateReader, guard: DependsParam, clock: Clock
) -> None:
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
    ) -> BaseModel:
        try:
            found = reader.get(serial)
        except InvalidQuery as exc:
            raise _invalid(exc) from exc
        except LedgerReadError as exc:
            raise _unavailable(exc) from exc
        if found is None:
            raise HTTPException(404, detail=f"no certificate with serial {serial} in the record")
        return detail_of(found, clock())


def _verify_route(router: APIRouter, reader: CertificateReader, guard: DependsParam) -> None:
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
        return VerifyResult.model_validate(dataclasses.asdict(report))


@dataclass(frozen=True, slots=True)
class CaState:
    """What /v1/ca reports besides the time."""

    ca_certificates: Callable[[], CaCertificates]
    csr_policy: str
    authenticators: list[str]
    clusters: Callable[[], Sequence[ClusterStatus]]


def _ca_routes(
    router: APIRouter,
    state: CaState,
    clock: Clock,
    spiffe_bundle: Callable[[], dict[str, Any]],
) -> None:
    ca_certificates = state.ca_certificates

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
        return SpiffeBundle.model_validate(spiffe_bundle())

    @router.get("/ca", response_model=CaInfo, summary="Roots, intermediates and CA policy")
    def ca_state() -> CaInfo:
        material, now = ca_certificates(), clock()
        return CaInfo(
            roots=[ca_info(c, now) for c in material.roots],
            intermediates=[ca_info(c, now) for c in material.intermediates],
            csr_policy=state.csr_policy,
            authenticators=[public_name(n) for n in state.authenticators],
            signing_key=SigningKeyInfo.model_validate(material.signing_key)
            if material.signing_key
            else None,
            clusters=[cluster_info(c) for c in state.clusters()],
        )
