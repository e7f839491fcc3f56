"""The web view's access (issue #15 item 7): the admin token once, then an HttpOnly,
SameSite=Strict cookie that is not the token; nothing without it. Real CA, real HTTP."""

from __future__ import annotations

import httpx

from tests.integration.ui.conftest import ViewedCa


def test_without_token_only_the_login_form(viewed: ViewedCa) -> None:
    response = httpx.get(f"{viewed.base}/ui")
    assert response.status_code == 401
    assert 'action="/ui/login"' in response.text
    assert "spiffe://" not in response.text  # no record data leaks before sign-in
    assert response.headers["www-authenticate"] == "Bearer"


def test_token_exchange_redirects_to_a_clean_url_with_a_derived_cookie(viewed: ViewedCa) -> None:
    response = httpx.get(f"{viewed.base}/ui", params={"token": viewed.token})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui"  # the token leaves the URL at once
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("bulwark_ui=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert viewed.token not in cookie  # the cookie is an HMAC, not the token
    page = httpx.get(f"{viewed.base}/ui", cookies={"bulwark_ui": response.cookies["bulwark_ui"]})
    assert page.status_code == 200
    assert all(spiffe_id in page.text for spiffe_id in viewed.serials)
    assert viewed.token not in page.text


def test_wrong_token_and_forged_cookie_are_refused(viewed: ViewedCa) -> None:
    assert httpx.get(f"{viewed.base}/ui", params={"token": "nope"}).status_code == 401
    forged = httpx.get(f"{viewed.base}/ui", cookies={"bulwark_ui": viewed.token})
    assert forged.status_code == 401  # the raw token is not a session cookie
    login = httpx.post(f"{viewed.base}/ui/login", data={"token": "nope"})
    assert login.status_code == 401 and "not the admin token" in login.text
    assert "set-cookie" not in login.headers


def test_login_form_and_bearer_header(viewed: ViewedCa) -> None:
    login = httpx.post(f"{viewed.base}/ui/login", data={"token": viewed.token})
    assert login.status_code == 303 and login.headers["location"] == "/ui"
    assert "bulwark_ui" in login.cookies
    bearer = httpx.get(f"{viewed.base}/ui", headers={"Authorization": f"Bearer {viewed.token}"})
    assert bearer.status_code == 200


def test_login_from_another_origin_is_refused(viewed: ViewedCa) -> None:
    response = httpx.post(
        f"{viewed.base}/ui/login",
        data={"token": viewed.token},
        headers={"Origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_bad_form_bodies_get_4xx_not_500(viewed: ViewedCa) -> None:
    url = f"{viewed.base}/ui/login"
    assert httpx.post(url, content=b"token=\xff\xfe").status_code == 400
    assert httpx.post(url, content=b"a=" + b"x" * 5000).status_code == 413
    assert httpx.post(url, content=b"a=1&" * 10).status_code == 400  # too many fields
    assert httpx.get(f"{viewed.base}/ui", params={"token": "x" * 2000}).status_code == 422


def test_page_loads_nothing_and_runs_nothing(viewed: ViewedCa) -> None:
    page = httpx.get(f"{viewed.base}/ui", headers={"Authorization": f"Bearer {viewed.token}"})
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script" not in page.text and "http://" not in page.text.replace(
        "http://www.w3.org", ""
    )
    assert "https://" not in page.text
