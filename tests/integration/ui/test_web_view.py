"""The web view in headless Chromium against a real CA with issued certificates (issue #15
item 7): the DOM shows every identity, the timeline, issuance and refusals, the CA material;
a screenshot is saved under the test's output directory."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from tests.integration.ui.conftest import WORKLOADS, ViewedCa
from tests.support import chromium


class Elements(HTMLParser):
    """Every start tag's attributes, and the text inside elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


def parse(dom: str) -> Elements:
    parser = Elements()
    parser.feed(dom)
    return parser


def test_dom_shows_identities_timeline_activity_and_ca(viewed: ViewedCa, tmp_path: Path) -> None:
    # The ?token= exchange: Chromium follows the 303, keeps the cookie, renders /ui.
    dom = chromium.dump_dom(tmp_path / "profile", f"{viewed.base}/ui?token={viewed.token}")
    assert viewed.token not in dom
    page = parse(dom)
    rows = page.having("tr")
    shown = {r["data-spiffe-id"] for r in rows if "data-spiffe-id" in r}
    assert shown == set(viewed.serials)
    bars = {r["data-serial"] for r in page.having("rect") if "data-serial" in r}
    assert bars == set(viewed.serials.values())  # one timeline bar per current certificate
    assert page.having("svg", id="expiry-timeline") and page.having("line", **{"class": "now"})
    issued = re.search(r'<span id="issued-total">(\d+)</span>', dom)
    assert issued is not None and int(issued.group(1)) == len(WORKLOADS) + 1  # and a renewal
    renewed = re.search(
        r'data-spiffe-id="spiffe://cluster.local/ns/shop/sa/web" data-kind="x509-svid">.*?</tr>',
        dom,
    )
    assert renewed is not None and viewed.serials[
        "spiffe://cluster.local/ns/shop/sa/web"
    ] in renewed.group(0)
    assert '<td class="num">2</td>' in renewed.group(0)  # both of its certificates are active
    refused = re.search(
        r'<tr data-reason="authentication"><td>authentication</td><td class="num">(\d+)<', dom
    )
    assert refused is not None and int(refused.group(1)) == 1
    assert len(page.having("tr", **{"class": "ca-cert", "data-role": "root"})) == 1
    assert "no rotation under way" in dom


def test_jwt_svids_have_their_own_rows_and_counts(viewed: ViewedCa, tmp_path: Path) -> None:
    """Issue 22: a JWT-SVID was shown as an identity's current "certificate" and counted
    among the active certificates and the certificates issued."""
    dom = chromium.dump_dom(tmp_path / "profile", f"{viewed.base}/ui?token={viewed.token}")
    page = parse(dom)
    spiffe_id, jti = viewed.jwt_svid
    rows = page.having("tr", data_spiffe_id=spiffe_id)
    assert sorted(r["data-kind"] for r in rows) == ["jwt-svid", "x509-svid"]
    jwt_row = re.search(r'data-kind="jwt-svid">.*?</tr>', dom)
    assert jwt_row is not None and jti in jwt_row.group(0) and "JWT-SVID" in jwt_row.group(0)
    certificate = re.search(
        rf'data-spiffe-id="{re.escape(spiffe_id)}" data-kind="x509-svid">.*?</tr>', dom
    )
    assert certificate is not None and viewed.serials[spiffe_id] in certificate.group(0)
    assert jti not in {r["data-serial"] for r in page.having("rect") if "data-serial" in r}
    counted = {
        name: int(found.group(1))
        for name in ("active-certificates", "active-jwt-svids", "issued-total", "jwt-svids-total")
        if (found := re.search(rf'<span id="{name}">(\d+)</span>', dom))
    }
    assert counted == {
        "active-certificates": len(WORKLOADS) + 1,
        "active-jwt-svids": 1,
        "issued-total": len(WORKLOADS) + 1,
        "jwt-svids-total": 1,
    }


def test_screenshot(viewed: ViewedCa, tmp_path: Path) -> None:
    out = tmp_path / "bulwark-ui.png"
    chromium.screenshot(tmp_path / "profile", f"{viewed.base}/ui?token={viewed.token}", out)
    print(f"web view screenshot: {out}")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_token_chromium_sees_only_the_login_form(viewed: ViewedCa, tmp_path: Path) -> None:
    dom = chromium.dump_dom(tmp_path / "profile", f"{viewed.base}/ui")
    page = parse(dom)
    assert page.having("form", action="/ui/login", method="post")
    assert "spiffe://" not in dom
