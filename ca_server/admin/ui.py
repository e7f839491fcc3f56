"""The web view on the admin port: `/ui`, read-only, behind the admin API's token.

Pages are rendered on the server (stdlib `string.Template`, templates and CSS in `ui_templates/`)
with inline SVG charts; nothing is loaded from anywhere (CSP `default-src 'none'`, no
script). What it shows:
- identities and their current certificates and JWT-SVIDs, each kind on its own row and
  counted apart (active rows of the issuance record);
- an expiry timeline of the X.509 certificates across the mesh (SVG);
- certificate issuance per hour over the last day (from the record; JWT-SVIDs counted apart),
  and refusals by reason (from the
  `bulwark_ca_refusals_total` counters since this CA process started: the record keeps
  issued certificates only, so refusals have no history);
- CA material with expiry and rotation state (what `/v1/ca` shows);
- with Kubernetes, the clusters it serves: reachable or not, last sync (`/v1/ca` `clusters`).

Access is the admin API's: open on a loopback-only admin port, else the admin token.
A browser presents the token once (the login form, or `/ui?token=...`, which redirects
to `/ui` at once) and then holds an HttpOnly, SameSite=Strict cookie derived from the
token (HMAC; the cookie is not the token). A `Authorization: Bearer` header works too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from ca_server.admin import ui_render as render
from ca_server.admin.models import ca_info, cluster_info
from ca_server.admin.routes import CaCertificates, CertificateReader
from ca_server.errors import REFUSAL_REASONS
from ca_server.kube.status import ClusterStatus
from ca_server.record.entry import JWT_SVID, X509_SVID
from ca_server.record.ledger import CertificateQuery, LedgerReadError, StoredCertificate

COOKIE = "bulwark_ui"
MAX_ROWS = 5000  # record rows read per page view
MAX_FORM_BYTES = 4096
ACTIVITY_WINDOW = timedelta(hours=24)
ACTIVITY_BUCKET = timedelta(hours=1)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class UiAccess:
    """Who may see the view: everyone on a loopback-only port, else holders of the token."""

    admin_token: str | None
    loopback: bool

    def session(self) -> str | None:
        """The cookie value: an HMAC of a fixed label under the token (not the token)."""
        if self.admin_token is None:
            return None
        key = self.admin_token.encode()
        return hmac.new(key, b"bulwark admin web view session v1", hashlib.sha256).hexdigest()

    def token_ok(self, presented: str) -> bool:
        expected = self.admin_token.encode() if self.admin_token is not None else None
        return expected is not None and hmac.compare_digest(presented.encode(), expected)

    def allowed(self, request: Request) -> bool:
        if self.loopback:
            return True
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and self.token_ok(header[7:].strip()):
            return True
        session, cookie = self.session(), request.cookies.get(COOKIE, "")
        return session is not None and hmac.compare_digest(cookie.encode(), session.encode())


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _login_page(error: str = "", status: int = 401) -> HTMLResponse:
    page = render.template("login.html").substitute(style=render.style(), error=error)
    response = _html(page, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _signed_in(access: UiAccess) -> Response:
    """303 to /ui with the session cookie: the token leaves the URL bar at once."""
    response = RedirectResponse("/ui", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE, access.session() or "", httponly=True, samesite="strict", path="/ui"
    )
    return response


def _same_origin(request: Request) -> bool:
    """A form post carries an Origin; it must name this host (a page elsewhere cannot log in)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def build_ui_router(
    *,
    reader: CertificateReader,
    ca_certificates: Callable[[], CaCertificates],
    refusals: Callable[[], dict[str, float]],
    admin_token: str | None,
    loopback: bool,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    clusters: Callable[[], Sequence[ClusterStatus]] = list,
) -> APIRouter:
    """The /ui routes (HTML, out of the OpenAPI schema)."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    access = UiAccess(admin_token=admin_token, loopback=loopback)

    @router.get("")
    def view(
        request: Request, token: Annotated[str | None, Query(max_length=1024)] = None
    ) -> Response:
        if token is not None:  # the ?token= exchange: set the cookie, drop the token from the URL
            if access.token_ok(token):
                return _signed_in(access)
            return _login_page("That is not the admin token.")
        if not access.allowed(request):
            return _login_page(_closed_reason(access))
        try:
            sources = PageSources(reader, ca_certificates, refusals, clusters)
            return _html(_page(sources, clock(), access))
        except LedgerReadError as exc:
            return _html(f"<p>The issuance record is unavailable: {escape(str(exc))}</p>", 503)

    _login_routes(router, access)
    return router


def _closed_reason(access: UiAccess) -> str:
    if access.admin_token is None:
        return "This CA has no --admin-token-file: the web view is closed off loopback."
    return ""


def _login_routes(router: APIRouter, access: UiAccess) -> None:
    @router.get("/login")
    def login_form() -> Response:
        return _login_page(_closed_reason(access), status=200)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return _html("<p>Sign-in from another origin is refused.</p>", 403)
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return _html("<p>The sign-in form is too large.</p>", 413)
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return _login_page("The sign-in form could not be read.", status=400)
        presented = fields.get("token", [""])[0].strip()
        if not access.token_ok(presented):
            return _login_page("That is not the admin token.")
        return _signed_in(access)

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return response


def _rows(reader: CertificateReader, query: CertificateQuery) -> list[StoredCertificate]:
    """Every row `query` selects, page by page, up to MAX_ROWS."""
    rows: list[StoredCertificate] = []
    while True:
        page = reader.list(query)
        rows.extend(page.items)
        if page.next_cursor is None or len(rows) >= MAX_ROWS:
            return rows[:MAX_ROWS]
        query = dataclasses.replace(query, cursor=page.next_cursor)


def refusal_counts(multiproc_dir: str | None) -> dict[str, float]:
    """`bulwark_ca_refusals_total` summed by reason over every worker, every reason shown."""
    counts = dict.fromkeys(REFUSAL_REASONS, 0.0)
    if not multiproc_dir:
        return counts
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "bulwark_ca_refusals_total":
                reason = sample.labels.get("reason", "internal")
                counts[reason] = counts.get(reason, 0.0) + sample.value
    return counts


def kind_of(row: StoredCertificate) -> str:
    """x509-svid or jwt-svid (rows from before schema 3 carry no kind: X.509)."""
    return row.kind or X509_SVID


def current_identities(rows: list[StoredCertificate]) -> list[render.Identity]:
    """One entry per SPIFFE ID and kind (X.509 certificate, JWT-SVID): the one that expires
    last, soonest-expiring first."""
    latest: dict[tuple[str, str], StoredCertificate] = {}
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.spiffe_id, kind_of(row))
        counts[key] = counts.get(key, 0) + 1
        if key not in latest or row.not_after > latest[key].not_after:
            latest[key] = row
    found = [
        render.Identity(
            spiffe_id=r.spiffe_id,
            kind=kind,
            namespace=r.namespace,
            service_account=r.service_account,
            serial=r.serial,
            authenticator=r.authenticator,
            not_before=r.not_before,
            not_after=r.not_after,
            active=counts[(r.spiffe_id, kind)],
        )
        for (_, kind), r in latest.items()
    ]
    return sorted(found, key=lambda i: (i.not_after, i.spiffe_id, i.kind))


def issued_per_bucket(rows: list[StoredCertificate], start: datetime) -> list[int]:
    buckets = [0] * int(ACTIVITY_WINDOW / ACTIVITY_BUCKET)
    for row in rows:
        n = int((row.recorded_at - start) / ACTIVITY_BUCKET)
        if 0 <= n < len(buckets):
            buckets[n] += 1
    return buckets


@dataclass(frozen=True, slots=True)
class PageSources:
    """Where the page's contents come from."""

    reader: CertificateReader
    ca_certificates: Callable[[], CaCertificates]
    refusals: Callable[[], dict[str, float]]
    clusters: Callable[[], Sequence[ClusterStatus]]


def _page(sources: PageSources, now: datetime, access: UiAccess) -> str:
    reader = sources.reader
    active = _rows(reader, CertificateQuery(state="active", limit=1000))
    identities = current_identities(active)
    certificates = [i for i in identities if i.kind == X509_SVID]
    start = (now - ACTIVITY_WINDOW + ACTIVITY_BUCKET).replace(minute=0, second=0, microsecond=0)
    recent = _rows(reader, CertificateQuery(issued_since=start, limit=1000))
    material = sources.ca_certificates()
    roots = [ca_info(c, now) for c in material.roots]
    intermediates = [ca_info(c, now) for c in material.intermediates]
    counts = issued_per_bucket([r for r in recent if kind_of(r) == X509_SVID], start)
    jwt_recent = sum(1 for r in recent if kind_of(r) == JWT_SVID)
    capped = f" (the first {MAX_ROWS} rows)" if len(active) >= MAX_ROWS else ""
    active_jwt = sum(1 for r in active if kind_of(r) == JWT_SVID)
    names = len({i.spiffe_id for i in identities})
    return render.template("page.html").substitute(
        title="Bulwark CA",
        style=render.style(),
        generated=render.stamp(now),
        generated_iso=now.isoformat(),
        logout=""
        if access.loopback
        else '<form method="post" action="/ui/logout"><button type="submit">Sign out</button></form>',
        identities_note=f'{names} identities: <span id="active-certificates">'
        f"{len(active) - active_jwt}</span> active X.509 certificates and "
        f'<span id="active-jwt-svids">{active_jwt}</span> active JWT-SVIDs{capped}, from the '
        "issuance record.",
        identities=render.identities_table(identities, now),
        timeline=render.timeline_svg(certificates, now),
        issuance=f'<h3>Certificates issued per hour, last 24 hours (<span id="issued-total">'
        f"{sum(counts)}</span>, from the issuance record; JWT-SVIDs are counted apart: "
        f'<span id="jwt-svids-total">{jwt_recent}</span> in these 24 hours)</h3>'
        + render.issuance_svg(counts, start, ACTIVITY_BUCKET),
        refusals="<h3>Refusals by reason since this CA process started (from the "
        "<code>bulwark_ca_refusals_total</code> counters; the record keeps no refusals, so "
        "there is no history)</h3>" + render.refusals_table(sources.refusals()),
        rotation=render.rotation_state(roots, now),
        ca=render.ca_table(roots, intermediates, now),
        clusters=render.clusters_table([cluster_info(c) for c in sources.clusters()], now),
    )
