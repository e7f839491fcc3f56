"""Adversarial admin API table (#12 Admin API): every input gets its exact code, nothing changes.

Each row goes over real HTTP to the admin app as the CA builds it (`create_admin_app` plus the
/v1 router on a real SQLite record). After each row the record is byte-for-byte what it was and
the server still answers. Defects covered (505d662): `expiring_within=99999999999999` and a
forged cursor `v1:10^30:<filter digest>` answered 500; a page whose DNS name was rebound to
127.0.0.1 could read the record (no Host check); `/v1/ca` showed the data-dir path to anyone.
"""

from __future__ import annotations

import base64
import hashlib
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from ca_server.admin import CaCertificates, build_admin_router, create_admin_app
from ca_server.record.ledger import CertificateQuery, open_reader, open_recorder
from tests.support.http_server import serve
from tests.support.record_entries import BASE_TIME, make_entry
from tests.support.record_material import roots_and_intermediate

NOW = BASE_TIME + timedelta(hours=12)
DATA_DIR_MARK = "secret-data-dir-7f3a"


@dataclass
class Api:
    url: str
    db: Path

    def snapshot(self) -> str:
        """A digest of the record file: any write changes it."""
        return hashlib.sha256(self.db.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("admin")
    db = tmp / "record.db"
    recorder = open_recorder(f"sqlite:///{db}")
    for i in range(12):
        recorder.record(make_entry(namespace=f"ns{i % 3}", lifetime=timedelta(hours=1 + i)))
    recorder.close()
    roots, inter = roots_and_intermediate()
    reader = open_reader(f"sqlite:///{db}", clock=lambda: NOW)
    router = build_admin_router(
        reader=reader,
        ca_certificates=lambda: CaCertificates(roots=tuple(roots), intermediates=(inter,)),
        csr_policy="strict",
        authenticators=["client-cert", f"jwt (local issuer in /var/lib/{DATA_DIR_MARK})"],
        admin_token=None,
        loopback=True,
        clock=lambda: NOW,
    )
    metrics = tmp / "metrics"
    metrics.mkdir()
    app = create_admin_app(
        metrics_dir=str(metrics),
        material=lambda: None,
        readiness=lambda: (True, "ready"),
        routers=[router],
    )
    with serve(app) as port:
        yield Api(url=f"http://127.0.0.1:{port}", db=db)
    reader.close()


def forged_cursor(seq: str, query: CertificateQuery | None = None) -> str:
    digest = (query or CertificateQuery()).filter_digest()
    raw = f"v1:{seq}:{digest}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


LIST = "/v1/certificates"
ROWS: list[tuple[str, str, dict[str, str], int, str]] = [
    # (id, path and query, extra headers, exact code, text the answer must hold)
    ("huge-seconds", f"{LIST}?expiring_within=99999999999999", {}, 422, "at most 2562047h"),
    ("huge-days", f"{LIST}?expiring_within=99999999999999d", {}, 422, "at most 2562047h"),
    ("huge-weeks", f"{LIST}?expiring_within=9999999999w9999999999d", {}, 422, "limit"),
    ("negative", f"{LIST}?expiring_within=-5", {}, 422, "not negative"),
    ("exponent", f"{LIST}?expiring_within=1e9", {}, 422, "such as 1h30m"),
    ("long-duration", f"{LIST}?expiring_within={'9' * 5000}", {}, 422, "too long"),
    ("cursor-10^30", f"{LIST}?cursor={forged_cursor(str(10**30))}", {}, 422, "cursor is malformed"),
    ("cursor-2^63", f"{LIST}?cursor={forged_cursor(str(2**63))}", {}, 422, "cursor is malformed"),
    ("cursor-negative", f"{LIST}?cursor={forged_cursor('-1')}", {}, 422, "cursor is malformed"),
    ("cursor-5000-digits", f"{LIST}?cursor={forged_cursor('9' * 5000)}", {}, 422, "malformed"),
    ("cursor-not-base64", f"{LIST}?cursor=%%%%", {}, 422, "cursor is malformed"),
    ("cursor-non-ascii", f"{LIST}?cursor=%C3%A9t%C3%A9", {}, 422, "cursor is malformed"),
    (
        "cursor-other-filter",
        f"{LIST}?namespace=ns1&cursor={forged_cursor('5')}",
        {},
        422,
        "different filters",
    ),
    ("limit-10^30", f"{LIST}?limit={10**30}", {}, 422, "limit"),
    ("limit-text", f"{LIST}?limit=all", {}, 422, "limit"),
    ("limit-negative", f"{LIST}?limit=-1", {}, 422, "limit"),
    ("state-case", f"{LIST}?state=ACTIVE", {}, 422, "state"),
    ("namespace-nul", f"{LIST}?namespace=ns1%00", {}, 422, "control characters"),
    ("namespace-5000", f"{LIST}?namespace={'a' * 5000}", {}, 422, "longer than 2048"),
    ("spiffe-id-newline", f"{LIST}?spiffe_id=spiffe://x/ns/a%0Ab", {}, 422, "control"),
    ("since-words", f"{LIST}?issued_since=yesterday", {}, 422, "RFC 3339"),
    ("since-naive", f"{LIST}?issued_since=2026-01-01T00:00:00", {}, 422, "UTC offset"),
    ("since-year-0", f"{LIST}?issued_before=0001-01-01T00:00:00%2B14:00", {}, 422, "range"),
    ("since-year-99999", f"{LIST}?issued_since=99999-01-01T00:00:00Z", {}, 422, "RFC 3339"),
    (
        "since-after-before",
        f"{LIST}?issued_since=2026-02-01T00:00:00Z&issued_before=2026-01-01T00:00:00Z",
        {},
        422,
        "issued_since must be before issued_before",
    ),
    ("serial-not-hex", "/v1/certificates/zz", {}, 422, "hexadecimal"),
    ("serial-65-digits", f"/v1/certificates/{'f' * 65}", {}, 422, "hexadecimal"),
    ("serial-nul", "/v1/certificates/ab%00", {}, 422, "hexadecimal"),
    ("bundle-format", "/v1/trust-bundle?format=jwks", {}, 422, "format"),
    ("rebind-list", LIST, {"Host": "evil.example"}, 400, "DNS rebinding"),
    ("rebind-port", f"{LIST}?limit=1", {"Host": "attacker.test:8080"}, 400, "DNS rebinding"),
    ("rebind-suffix", "/v1/ca", {"Host": "localhost.evil.example"}, 400, "DNS rebinding"),
    ("rebind-ip-name", "/v1/record/verify", {"Host": "127.0.0.1.nip.io"}, 400, "DNS rebinding"),
    ("rebind-metrics", "/metrics", {"Host": "evil.example"}, 400, "DNS rebinding"),
    ("rebind-healthz", "/healthz", {"Host": "evil.example"}, 400, "DNS rebinding"),
    ("rebind-empty", LIST, {"Host": ""}, 400, "DNS rebinding"),
    ("host-localhost", f"{LIST}?limit=1", {"Host": "localhost:9"}, 200, '"items"'),
    ("host-v6", f"{LIST}?limit=1", {"Host": "[::1]:443"}, 200, '"items"'),
    ("within-at-limit", f"{LIST}?expiring_within=36500d", {}, 200, '"items"'),
    ("within-over-limit", f"{LIST}?expiring_within=36501d", {}, 422, "limit of 36500d"),
    ("since-window", f"{LIST}?issued_since=2000-01-01T00:00:00Z", {}, 200, '"serial"'),
]


@pytest.mark.parametrize(
    ("target", "headers", "code", "needle"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_adversarial_input(
    api: Api, target: str, headers: dict[str, str], code: int, needle: str
) -> None:
    before = api.snapshot()
    response = httpx.get(api.url + target, headers=headers, timeout=30)
    assert response.status_code == code, response.text
    assert needle in response.text
    assert "Traceback" not in response.text
    assert api.snapshot() == before
    assert httpx.get(api.url + "/healthz").status_code == 200


def test_post_is_refused_and_changes_nothing(api: Api) -> None:
    before = api.snapshot()
    assert httpx.post(api.url + LIST, json={"serial": "ab"}).status_code == 405
    assert httpx.delete(api.url + "/v1/certificates/ab").status_code == 405
    assert api.snapshot() == before


def test_ca_state_shows_no_filesystem_path(api: Api) -> None:
    response = httpx.get(api.url + "/v1/ca")
    assert response.status_code == 200
    assert DATA_DIR_MARK not in response.text and "/var/lib" not in response.text
    assert response.json()["authenticators"] == ["client-cert", "jwt (local issuer in <path>)"]


def test_a_request_without_host_is_refused(api: Api) -> None:
    """HTTP/1.0 without a Host header (as a rebinding proxy might send) gets 400."""
    port = int(api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/certificates HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


@pytest.mark.parametrize(
    "param", ["expiring_within", "cursor", "namespace", "issued_since", "limit"]
)
@pytest.mark.slow
def test_random_values_never_reach_500(api: Api, param: str) -> None:
    """200 random values per parameter: only 200 or 422, never a server error."""
    rng = random.Random(param)
    alphabet = "0123456789abcdefhmswdz:-+T.Z%é\x00\n v1=_/"
    before = api.snapshot()
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for _ in range(200):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            response = client.get(LIST, params={param: value})
            assert response.status_code in (200, 422), (value, response.text)
    assert api.snapshot() == before
