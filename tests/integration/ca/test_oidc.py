"""JWT authentication against an OIDC issuer served over real HTTP: discovery, key rotation."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ca_server.authn.jwks import JwksSource
from ca_server.errors import UpstreamUnavailable
from certs.keys import generate_key, private_key_pem
from certs.pem import to_pem
from tests.support.broken import csr_pem, sa_claims
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import start_ca
from tests.support.metrics import metric

ME = "spiffe://cluster.local/ns/demo/sa/frontend"


class Issuer:
    """A minimal OIDC issuer: discovery document and JWKS, keys changeable at run time."""

    def __init__(self, port: int = 0) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.jwks_fetches = 0
        self.stalled = threading.Event()  # set: JWKS requests hang until `resume` is set
        self.resume = threading.Event()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": issuer.url + "/keys"}
                elif self.path == "/keys":
                    issuer.jwks_fetches += 1
                    if issuer.stalled.is_set():
                        issuer.resume.wait(30)
                    body = {"keys": [issuer.jwk(kid, k) for kid, k in issuer.keys.items()]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        data.update(kid=kid, alg="RS256", use="sig")
        return data

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, kid: str) -> str:
        return jwt.encode(
            sa_claims(iss=self.url), self.keys[kid], algorithm="RS256", headers={"kid": kid}
        )


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    iss = Issuer()
    try:
        yield iss
    finally:
        iss.resume.set()
        iss.server.shutdown()


@pytest.mark.slow
def test_discovery_and_refresh_on_an_unknown_kid(issuer: Issuer, tmp_path: Path) -> None:
    issuer.add_key("first")
    ca = start_ca(tmp_path / "ca", "--jwt-issuer", issuer.url)
    try:
        ca.wait_ready()  # the supervisor has fetched the keys once
        fetched = issuer.jwks_fetches
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        assert (
            len(
                create_certificate(
                    chan, csr_pem(generate_key(), uris=(ME,)), token=issuer.token("first")
                )
            )
            == 2
        )
        issuer.add_key("second")  # the issuer rotates its signing key
        time.sleep(10.5)  # unknown-kid refreshes are rate limited to one per 10 s
        chain = create_certificate(
            chan, csr_pem(generate_key(), uris=(ME,)), token=issuer.token("second")
        )
        assert len(chain) == 2
        assert issuer.jwks_fetches == fetched + 2, "the worker's first fetch, then one refresh"
        with pytest.raises(grpc.RpcError) as err:
            create_certificate(
                chan, csr_pem(generate_key(), uris=(ME,)), token=ca.mint_token("demo", "frontend")
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (
            "the embedded issuer is not trusted now"
        )
        assert "embedded token issuer" not in ca.log()
    finally:
        ca.stop()


def test_static_jwks_file(issuer: Issuer, tmp_path: Path) -> None:
    issuer.add_key("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [issuer.jwk("k1", issuer.keys["k1"])]}))
    ca = start_ca(
        tmp_path / "ca",
        "--jwks-file",
        str(jwks),
        "--jwt-issuer",
        issuer.url,
        "--audiences",
        "istio-ca,other",
    )
    try:
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        assert (
            len(
                create_certificate(
                    chan, csr_pem(generate_key(), uris=(ME,)), token=issuer.token("k1")
                )
            )
            == 2
        )
        assert issuer.jwks_fetches == 0, "a static JWKS file means no HTTP fetch"
    finally:
        ca.stop()


def test_unreachable_issuer_is_unavailable_not_unauthenticated(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca", "--jwt-issuer", "http://127.0.0.1:9")
    try:
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(
            sa_claims(iss="http://127.0.0.1:9"), key, algorithm="RS256", headers={"kid": "x"}
        )
        with pytest.raises(grpc.RpcError) as err:
            create_certificate(chan, csr_pem(generate_key(), uris=(ME,)), token=token)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (
            "retryable: the issuer may come back"
        )
        assert "signing keys cannot be loaded" in (err.value.details() or "")
        code, body = ca.readyz()
        assert code == 503 and "cannot fetch the token issuer's keys" in body["detail"], body
    finally:
        ca.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_an_issuer_unreachable_at_start_keeps_the_ca_unready_until_it_answers(
    tmp_path: Path,
) -> None:
    """Issue 22 item 11: OIDC discovery may come later, so the CA starts, says why it is not
    ready, and turns ready once the issuer answers; its tokens are accepted then."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ca = start_ca(tmp_path / "ca", "--jwt-issuer", url)
    issuer: Issuer | None = None
    try:
        code, body = ca.readyz()
        assert code == 503, body
        assert "token issuer's keys" in body["detail"] and url in body["detail"], body
        issuer = Issuer(port)
        issuer.add_key("k1")
        ca.wait_ready(timeout=20)
        chain = create_certificate(
            channel(ca.grpc_addr, ca.root_cert_path),
            csr_pem(generate_key(), uris=(ME,)),
            token=issuer.token("k1"),
        )
        assert len(chain) == 2
    finally:
        if issuer is not None:
            issuer.server.shutdown()
        ca.stop()
    said = [
        line for line in ca.log().splitlines() if "cannot fetch the token issuer's keys" in line
    ]
    assert len(said) == 1, said  # once per change, not every retry
    assert "signing key(s) fetched" in ca.log()


def test_a_request_waiting_on_the_issuer_does_not_hold_up_the_others(
    issuer: Issuer, tmp_path: Path
) -> None:
    # Each worker runs every request on one event loop: a key fetch must happen off it.
    issuer.add_key("k1")
    ca = start_ca(tmp_path / "ca", "--jwt-issuer", issuer.url, workers=1)
    try:
        ca.wait_ready()
        fetched = issuer.jwks_fetches
        client_key = generate_key()
        client_cert = ca.sign_leaf(
            ME, client_key.public_key(), now=datetime.now(UTC), ttl=timedelta(hours=1)
        )
        issuer.stalled.set()
        waiting: list[BaseException | list[str]] = []

        def token_request() -> None:
            chan = channel(ca.grpc_addr, ca.root_cert_path)
            try:
                waiting.append(
                    create_certificate(
                        chan, csr_pem(generate_key(), uris=(ME,)), token=issuer.token("k1")
                    )
                )
            except grpc.RpcError as exc:
                waiting.append(exc)

        stuck = threading.Thread(target=token_request)
        stuck.start()
        deadline = time.monotonic() + 30
        while issuer.jwks_fetches == fetched and time.monotonic() < deadline:
            time.sleep(0.01)
        assert issuer.jwks_fetches == fetched + 1, "the token request is waiting on the JWKS"
        mtls = channel(
            ca.mtls_addr,
            ca.root_cert_path,
            client_key=private_key_pem(client_key),
            client_chain=to_pem(client_cert).encode(),
        )
        renewed = create_certificate(mtls, csr_pem(generate_key(), uris=(ME,)), timeout=10)
        assert len(renewed) == 2 and not waiting, "renewed while the key fetch still hangs"
        issuer.resume.set()
        stuck.join(30)
        assert len(waiting) == 1 and isinstance(waiting[0], list), waiting
    finally:
        issuer.resume.set()
        ca.stop()


def test_a_call_beyond_max_concurrent_rpcs_gets_resource_exhausted_at_once(
    issuer: Issuer, tmp_path: Path
) -> None:
    # Two calls hang on the issuer's keys; the third must be refused, not queued.
    issuer.add_key("k1")
    ca = start_ca(
        tmp_path / "ca", "--jwt-issuer", issuer.url, "--max-concurrent-rpcs", "2", workers=1
    )
    try:
        ca.wait_ready()
        issuer.stalled.set()
        outcomes: list[BaseException | list[str]] = []

        def token_request() -> None:
            chan = channel(ca.grpc_addr, ca.root_cert_path)
            try:
                outcomes.append(
                    create_certificate(
                        chan, csr_pem(generate_key(), uris=(ME,)), token=issuer.token("k1")
                    )
                )
            except grpc.RpcError as exc:
                outcomes.append(exc)

        hanging = [threading.Thread(target=token_request) for _ in range(2)]
        for thread in hanging:
            thread.start()
        deadline = time.monotonic() + 30
        while metric(ca, "citadel_server_csr_count") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(ca, "citadel_server_csr_count") == 2, "two calls are in the CA"
        chan = channel(ca.grpc_addr, ca.root_cert_path)
        with pytest.raises(grpc.RpcError) as err:
            create_certificate(
                chan, csr_pem(generate_key(), uris=(ME,)), token=issuer.token("k1"), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not outcomes, "the first two are still waiting"
        issuer.resume.set()
        for thread in hanging:
            thread.join(30)
        assert len(outcomes) == 2 and all(isinstance(o, list) for o in outcomes), outcomes
        assert metric(ca, "citadel_server_csr_count") == 2, "the refused call is not counted"
    finally:
        issuer.resume.set()
        ca.stop()


class Trickler:
    """An issuer whose discovery document arrives one byte every `pause_s`: each read gets
    data well within any per-read timeout, the whole answer takes minutes."""

    def __init__(self, pause_s: float = 0.2) -> None:
        trickler = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"jwks_uri": trickler.url + "/keys", "pad": "x" * 600}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for byte in body:
                    if trickler.stop.is_set():
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(pause_s)

            def log_message(self, *args: object) -> None:
                pass

        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()


def test_a_trickling_issuer_is_cut_off_by_one_deadline() -> None:
    """Issue 22 item 9 (review): the OIDC fetch is bounded as a whole, not per read."""
    trickler = Trickler()
    try:
        source = JwksSource(issuer_url=trickler.url, timeout_s=1.5)
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as refused:
            source.key_for("k1")
        took = time.monotonic() - started
    finally:
        trickler.close()
    assert took < 4.0, f"the fetch took {took:.1f} s"
    cause = refused.value.__cause__
    assert isinstance(cause, UpstreamUnavailable) and "within 1.5 s" in cause.public_message
