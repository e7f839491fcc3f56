"""The /v1 admin routes over real HTTP: auth, errors, trust bundle forms, OpenAPI agreement."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI

from ca_server.admin import CaCertificates, build_admin_router, is_loopback
from ca_server.record.ledger import open_reader, open_recorder
from certs.pem import load_certificates
from tests.support.http_server import serve
from tests.support.record_entries import BASE_TIME, make_entry
from tests.support.record_material import roots_and_intermediate

TOKEN = "s3cret-admin-token"
NOW = BASE_TIME + timedelta(hours=12)


def make_app(url: str, *, loopback: bool, token: str | None = TOKEN) -> FastAPI:
    roots, inter = roots_and_intermediate()
    app = FastAPI()
    app.include_router(
        build_admin_router(
            reader=open_reader(url, clock=lambda: NOW),
            ca_certificates=lambda: CaCertificates(roots=tuple(roots), intermediates=(inter,)),
            csr_policy="strict",
            authenticators=["client-cert", "jwt"],
            admin_token=token,
            loopback=loopback,
            clock=lambda: NOW,
        )
    )
    return app


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'record.db'}"
    recorder = open_recorder(url)
    for i in range(30):
        recorder.record(make_entry(namespace=f"ns{i % 3}", lifetime=timedelta(hours=1 + i)))
    recorder.close()
    return url


@pytest.fixture
def remote(seeded: str) -> Iterator[str]:
    """The API as bound beyond loopback (0.0.0.0), reached through 127.0.0.1."""
    with serve(make_app(seeded, loopback=False), host="0.0.0.0") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("path", ["/v1/certificates", "/v1/certificates/abc", "/v1/record/verify"])
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Bearer {TOKEN}x", "Basic " + TOKEN, f"bearer{TOKEN}"]
)
def test_record_routes_refuse_without_the_token(remote: str, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(remote + path, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "a valid admin bearer token is required"}
    assert TOKEN not in response.text


def test_the_right_token_lists(remote: str) -> None:
    response = httpx.get(remote + "/v1/certificates", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and len(response.json()["items"]) == 30


def test_no_token_configured_refuses_everyone_off_loopback(seeded: str) -> None:
    with serve(make_app(seeded, loopback=False, token=None), host="0.0.0.0") as port:
        for headers in ({}, {"Authorization": "Bearer x"}):
            response = httpx.get(f"http://127.0.0.1:{port}/v1/certificates", headers=headers)
            assert response.status_code == 401


def test_public_routes_need_no_token(remote: str) -> None:
    assert httpx.get(remote + "/v1/trust-bundle").status_code == 200
    assert httpx.get(remote + "/v1/ca").status_code == 200


def test_loopback_needs_no_token(seeded: str) -> None:
    with serve(make_app(seeded, loopback=True)) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/certificates").status_code == 200


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("::")


@pytest.fixture
def local(seeded: str) -> Iterator[str]:
    with serve(make_app(seeded, loopback=True)) as port:
        yield f"http://127.0.0.1:{port}"


def test_show_and_unknown_serial(local: str) -> None:
    first = httpx.get(local + "/v1/certificates?limit=1").json()["items"][0]
    detail = httpx.get(local + f"/v1/certificates/{first['serial'].upper()}").json()
    assert detail["serial"] == first["serial"] and "BEGIN CERTIFICATE" in detail["certificate_pem"]
    missing = httpx.get(local + "/v1/certificates/abcdef")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no certificate with serial abcdef in the record"
    bad = httpx.get(local + "/v1/certificates/not-hex")
    assert bad.status_code == 422 and "hexadecimal" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("expiring_within=soon", "expiring_within must be a duration"),
        ("cursor=garbage", "cursor is malformed"),
        ("state=dead", "state"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
    ],
)
def test_bad_queries_say_what_is_wrong(local: str, query: str, needle: str) -> None:
    response = httpx.get(local + "/v1/certificates?" + query)
    assert response.status_code == 422
    assert needle in response.text


def test_cursor_is_bound_to_its_filters(local: str) -> None:
    page = httpx.get(local + "/v1/certificates?namespace=ns1&limit=2").json()
    other = httpx.get(local + f"/v1/certificates?namespace=ns2&cursor={page['next_cursor']}")
    assert other.status_code == 422 and "different filters" in other.json()["detail"]


def test_verify_endpoint(local: str) -> None:
    body = httpx.get(local + "/v1/record/verify").json()
    assert body == {
        "ok": True,
        "rows_checked": 30,
        "anchor_seq": 0,
        "head_seq": 30,
        "broken": None,
        "segments": [],
    }


def test_trust_bundle_pem_and_spiffe(local: str) -> None:
    pem = httpx.get(local + "/v1/trust-bundle")
    assert pem.headers["content-type"].startswith("application/x-pem-file")
    roots = load_certificates(pem.text)
    assert [r.subject.rfc4514_string() for r in roots] == ["O=root-ec", "O=root-rsa"]
    bundle = httpx.get(local + "/v1/trust-bundle?format=spiffe").json()
    assert bundle["spiffe_refresh_hint"] == 300
    assert [k["kty"] for k in bundle["keys"]] == ["EC", "RSA"]
    for key, root in zip(bundle["keys"], roots, strict=True):
        assert key["use"] == "x509-svid"
        assert base64.b64decode(key["x5c"][0]) == root.public_bytes(Encoding.DER)
        parsed = jwt.PyJWK(key).key  # the JWK parameters describe the same public key
        spki = PublicFormat.SubjectPublicKeyInfo
        assert parsed.public_bytes(Encoding.DER, spki) == root.public_key().public_bytes(
            Encoding.DER, spki
        )
        assert not {"d", "p", "q"} & key.keys()  # never private parameters
    assert httpx.get(local + "/v1/trust-bundle?format=jwks").status_code == 422


def test_ca_state(local: str) -> None:
    body = httpx.get(local + "/v1/ca").json()
    assert [r["subject"] for r in body["roots"]] == ["O=root-ec", "O=root-rsa"]
    assert [i["subject"] for i in body["intermediates"]] == ["O=intermediate"]
    assert body["csr_policy"] == "strict" and body["authenticators"] == ["client-cert", "jwt"]
    assert body["roots"][0]["seconds_left"] > 0


def _schema_props(doc: dict[str, Any], ref: str) -> set[str]:
    return set(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


def test_openapi_matches_the_responses(local: str) -> None:
    doc = httpx.get(local + "/openapi.json").json()
    paths = doc["paths"]
    listing = paths["/v1/certificates"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "namespace",
        "service_account",
        "spiffe_id",
        "cluster_id",
        "expiring_within",
        "issued_since",
        "issued_before",
        "state",
        "kind",
        "limit",
        "cursor",
    }
    assert {"200", "401", "422", "503"} <= set(listing["responses"])
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    body = httpx.get(local + "/v1/certificates?limit=1").json()
    assert set(body) == _schema_props(doc, ok)
    item_ref = doc["components"]["schemas"]["CertificateSummary"]
    assert set(body["items"][0]) == set(item_ref["properties"])
    detail_ref = paths["/v1/certificates/{serial}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    detail = httpx.get(local + f"/v1/certificates/{body['items'][0]['serial']}").json()
    assert set(detail) == _schema_props(doc, detail_ref)
    assert "404" in paths["/v1/certificates/{serial}"]["get"]["responses"]
    bundle = paths["/v1/trust-bundle"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "application/x-pem-file"} <= set(bundle)
    ca_ref = paths["/v1/ca"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(httpx.get(local + "/v1/ca").json()) == _schema_props(doc, ca_ref["$ref"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
