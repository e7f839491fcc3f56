"""HTML and inline SVG of the web view (`ui.py`): tables, the expiry timeline, activity charts.

Everything taken from the record or the CA material is escaped here; the page carries no
script and loads nothing (styles are inline, charts are SVG in the page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from importlib import resources
from string import Template

from ca_server.admin.models import CaCertificateInfo, ClusterInfo
from certs.values import time_left

TIMELINE_ROWS = 60  # identities drawn; the rest are counted below the chart
WIDTH = 960


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """An identity and the certificate of it that expires last (its current one)."""

    spiffe_id: str
    kind: str  # x509-svid or jwt-svid
    namespace: str
    service_account: str
    serial: str
    authenticator: str
    not_before: datetime
    not_after: datetime
    active: int  # active SVIDs of this identity and kind in the record


def template(name: str) -> Template:
    return Template((resources.files("ca_server.admin") / "ui_templates" / name).read_text("utf-8"))


def style() -> str:
    return (resources.files("ca_server.admin") / "ui_templates" / "style.css").read_text("utf-8")


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def health(not_before: datetime, not_after: datetime, now: datetime) -> str:
    """`ok`, `due` (past half-life), `late` (under 10% of its life left) or `expired`."""
    life = (not_after - not_before).total_seconds() or 1.0
    left = (not_after - now).total_seconds()
    if left <= 0:
        return "expired"
    if left < 0.1 * life:
        return "late"
    return "due" if left < 0.5 * life else "ok"


_HEALTH_TEXT = {
    "ok": "valid",
    "due": "past half-life",
    "late": "under 10% left",
    "expired": "expired",
}


def badge(state: str) -> str:
    return f'<span class="badge {state}">{_HEALTH_TEXT[state]}</span>'


KIND_TEXT = {"x509-svid": "X.509 certificate", "jwt-svid": "JWT-SVID"}


def identities_table(identities: Sequence[Identity], now: datetime) -> str:
    if not identities:
        return '<p class="empty">No active certificates or JWT-SVIDs in the record.</p>'
    rows = []
    for i in identities:
        left = (i.not_after - now).total_seconds()
        rows.append(
            f'<tr data-spiffe-id="{escape(i.spiffe_id)}" data-kind="{escape(i.kind)}">'
            f'<td class="mono">{escape(i.spiffe_id)}</td>'
            f"<td>{escape(KIND_TEXT.get(i.kind, i.kind))}</td>"
            f"<td>{escape(i.namespace)}</td><td>{escape(i.service_account)}</td>"
            f'<td class="mono">{escape(i.serial)}</td><td class="when">{stamp(i.not_after)}</td>'
            f'<td class="num">{time_left(left)}</td>'
            f"<td>{badge(health(i.not_before, i.not_after, now))}</td>"
            f'<td class="num">{i.active}</td><td>{escape(i.authenticator)}</td></tr>'
        )
    head = (
        "<tr><th>SPIFFE ID</th><th>Kind</th><th>Namespace</th><th>Service account</th>"
        "<th>Serial (JWT-SVID: jti)</th><th>Not after</th><th>Time left</th><th>State</th>"
        "<th>Active</th><th>Authenticator</th></tr>"
    )
    return f'<table id="identity-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _ticks(start: datetime, end: datetime, count: int = 6) -> list[datetime]:
    step = (end - start) / (count - 1)
    return [start + step * n for n in range(count)]


def timeline_svg(identities: Sequence[Identity], now: datetime) -> str:
    """Horizontal bars from not-before to not-after per identity, with a line at now."""
    shown = list(identities)[:TIMELINE_ROWS]
    if not shown:
        return '<p class="empty">Nothing to draw: no active certificates.</p>'
    start = min(min(i.not_before for i in shown), now)
    end = max(max(i.not_after for i in shown), now + timedelta(minutes=1))
    label_w, row_h, top = 200, 20, 24
    span = (end - start).total_seconds()
    plot = WIDTH - label_w - 16

    def x(when: datetime) -> float:
        return label_w + plot * (when - start).total_seconds() / span

    height = top + row_h * len(shown) + 8
    parts = [
        f'<svg id="expiry-timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="certificate expiry timeline">'
    ]
    ticks = _ticks(start, end)
    for n, tick in enumerate(ticks):
        tx, anchor = x(tick), "end" if n == len(ticks) - 1 else "middle"
        parts.append(f'<line class="axis" x1="{tx:.1f}" y1="14" x2="{tx:.1f}" y2="{height}"/>')
        parts.append(f'<text x="{tx:.1f}" y="11" text-anchor="{anchor}">{tick:%m-%d %H:%M}</text>')
    for n, i in enumerate(shown):
        y = top + n * row_h
        state = health(i.not_before, i.not_after, now)
        bx, bw = x(i.not_before), max(x(i.not_after) - x(i.not_before), 2.0)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{escape(_short(i))}</text>'
            f'<rect class="bar {state}" data-serial="{escape(i.serial)}" x="{bx:.1f}" '
            f'y="{y + 3}" width="{bw:.1f}" height="{row_h - 6}" rx="3">'
            f"<title>{escape(i.spiffe_id)}: until {stamp(i.not_after)}</title></rect>"
        )
    nx = x(now)
    parts.append(f'<line class="now" x1="{nx:.1f}" y1="14" x2="{nx:.1f}" y2="{height}"/></svg>')
    more = len(identities) - len(shown)
    if more > 0:
        parts.append(f'<p class="note">{more} more identities are not drawn.</p>')
    return "".join(parts)


def _short(i: Identity) -> str:
    return f"{i.namespace}/{i.service_account}" if i.namespace else i.spiffe_id


def issuance_svg(counts: Sequence[int], start: datetime, bucket: timedelta) -> str:
    """One bar per bucket of certificates recorded, oldest left."""
    height, base, top = 180, 150, 16
    peak = max(max(counts, default=0), 1)
    slot = (WIDTH - 48) / max(len(counts), 1)
    parts = [
        f'<svg id="issuance-chart" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="certificates issued per hour">',
        f'<line class="axis" x1="40" y1="{base}" x2="{WIDTH - 8}" y2="{base}"/>',
        f'<text x="36" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="36" y="{base}" text-anchor="end">0</text>',
    ]
    for n, count in enumerate(counts):
        h = (base - top) * count / peak
        bx = 44 + n * slot
        parts.append(
            f'<rect class="bar issued" x="{bx:.1f}" y="{base - h:.1f}" width="{slot - 4:.1f}" '
            f'height="{h:.1f}"><title>{count} issued from {start + bucket * n:%H:%M}</title></rect>'
        )
        if count:
            parts.append(
                f'<text x="{bx + (slot - 4) / 2:.1f}" y="{base - h - 3:.1f}" '
                f'text-anchor="middle">{count}</text>'
            )
        if n % 4 == 0:
            parts.append(
                f'<text x="{bx:.1f}" y="{base + 14}">{start + bucket * n:%m-%d %H:%M}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def refusals_table(refusals: dict[str, float]) -> str:
    """Refusals by reason with a bar each (counters since the CA process started)."""
    peak = max(refusals.values(), default=0.0) or 1.0
    rows = []
    for reason, count in sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0])):
        width = 300 * count / peak
        rows.append(
            f'<tr data-reason="{escape(reason)}"><td>{escape(reason)}</td>'
            f'<td class="num">{int(count)}</td><td><svg width="304" height="14">'
            f'<rect class="bar refused" x="0" y="2" width="{width:.1f}" height="10"/></svg></td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="3">none</td></tr>'
    return (
        '<table id="refusal-table"><thead><tr><th>Reason</th><th>Refused</th><th></th></tr>'
        f"</thead><tbody>{body}</tbody></table>"
    )


def clusters_table(clusters: Sequence[ClusterInfo], now: datetime) -> str:
    """The clusters a CA on Kubernetes serves: reachable or not, and since when."""
    if not clusters:
        return '<p class="note" id="clusters-none">This CA does not use Kubernetes.</p>'
    rows = []
    for c in clusters:
        state = {True: "reachable", False: "unreachable", None: "not probed yet"}[c.reachable]
        synced = (
            f"{stamp(c.last_sync)} ({int((now - c.last_sync).total_seconds())} s ago)"
            if c.last_sync is not None
            else "never"
        )
        rows.append(
            f'<tr class="cluster" data-cluster="{escape(c.cluster_id)}" data-state="{state}">'
            f"<td>{escape(c.cluster_id)}</td><td>{'own' if c.local else 'remote'}</td>"
            f"<td>{escape(c.source)}</td><td>{escape(c.server)}</td>"
            f'<td class="{"ok" if c.reachable else "late"}">{state}</td><td>{synced}</td>'
            f"<td>{escape(c.error)}</td></tr>"
        )
    head = (
        "<tr><th>Cluster</th><th>Role</th><th>Source</th><th>API server</th><th>State</th>"
        "<th>Last sync</th><th>Problem</th></tr>"
    )
    return f'<table id="cluster-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def ca_cards(role: str, infos: Sequence[CaCertificateInfo], now: datetime) -> str:
    parts = []
    for info in infos:
        state = health(info.not_before, info.not_after, now)
        life = (info.not_after - info.not_before).total_seconds() or 1.0
        used = min(max((now - info.not_before).total_seconds() / life, 0.0), 1.0)
        parts.append(
            f'<tr class="ca-cert" data-role="{role}"><td>{role}</td>'
            f'<td>{escape(info.subject)}</td><td class="mono">{escape(info.serial)}</td>'
            f'<td class="when">{stamp(info.not_before)}</td><td class="when">{stamp(info.not_after)}</td>'
            f'<td class="num">{time_left(info.seconds_left)}</td><td>{badge(state)}'
            f'<svg width="160" height="10"><rect class="track" width="160" height="10" rx="2"/>'
            f'<rect class="bar {state}" width="{160 * used:.1f}" height="10" rx="2"/></svg></td>'
            f'<td class="mono">{escape(info.sha256[:23])}…</td></tr>'
        )
    return "".join(parts)


def ca_table(
    roots: Sequence[CaCertificateInfo], intermediates: Sequence[CaCertificateInfo], now: datetime
) -> str:
    head = (
        "<tr><th>Role</th><th>Subject</th><th>Serial</th><th>Not before</th><th>Not after</th>"
        "<th>Time left</th><th>Life used</th><th>SHA-256</th></tr>"
    )
    body = ca_cards("root", roots, now) + ca_cards("intermediate", intermediates, now)
    return f'<table id="ca-table"><thead>{head}</thead><tbody>{body}</tbody></table>'


def rotation_state(roots: Sequence[CaCertificateInfo], now: datetime) -> str:
    """What the trust bundle says about root rotation."""
    if len(roots) > 1:
        newest = max(roots, key=lambda r: r.not_after)
        return (
            f"Root rotation in progress: {len(roots)} roots are trusted; the newest expires "
            f"{stamp(newest.not_after)}. Workloads trust both until the old root leaves the bundle."
        )
    if roots and health(roots[0].not_before, roots[0].not_after, now) != "ok":
        return "One root, past half of its life: a renewal is due (it is renewed by the leader)."
    return "One root in the trust bundle; no rotation under way."
