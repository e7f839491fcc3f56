"""The SPIFFE bundle endpoint of a real CA process over real TLS, in both profiles:
https_spiffe presents spiffe://<td>/bulwark/bundle-endpoint chained to the CA's roots,
https_web the operator's certificate; both serve the one bundle the admin API serves."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca_server.spiffe.federation import FederationPeer, fetch_bundle
from ca_server.spiffe.federation.fetcher import FetchFailed
from certs.files import write_atomic
from certs.keys import generate_key, private_key_pem
from certs.pem import to_pem
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_bundle import SpiffeBundle, parse_bundle
from certs.spiffe_id import SpiffeId, TrustDomain
from tests.support.ca_process import RunningCa, serve_once, start_ca


def fetch(peer: FederationPeer, known: SpiffeBundle | None) -> SpiffeBundle:
    return asyncio.run(fetch_bundle(peer, known))


def endpoint_addr(ca: RunningCa) -> tuple[str, int]:
    ready = json.loads((ca.data_dir.parent / f"{ca.data_dir.name}-ready.json").read_text())
    host, port = ready["bundle_endpoint_addr"].rsplit(":", 1)
    return host, int(port)


def get(host: str, port: int, ctx: ssl.SSLContext, method: str = "GET") -> tuple[int, bytes, bytes]:
    """(status, body, the server certificate's DER) of one request."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True) or b""
        conn.request(method, "/")
        response = conn.getresponse()
        return response.status, response.read(), der
    finally:
        conn.close()


def admin_bundle(ca: RunningCa) -> dict[str, Any]:
    url = f"{ca.admin_url}/v1/trust-bundle?format=spiffe"
    doc: dict[str, Any] = json.loads(urllib.request.urlopen(url).read())
    return doc


def test_https_spiffe_presents_the_endpoint_svid_and_serves_the_bundle(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "data", "--bundle-endpoint-addr", "127.0.0.1:0")
    try:
        host, port = endpoint_addr(ca)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=ca.root_cert_path)  # chains to the CA's root
        status, body, der = get(host, port, ctx)
        assert status == 200
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://cluster.local/bulwark/bundle-endpoint"
        ]
        doc = json.loads(body)
        assert doc == admin_bundle(ca)  # one builder
        assert {k["use"] for k in doc["keys"]} == {"x509-svid", "jwt-svid"}
        assert get(host, port, ctx, "POST")[0] == 405
        with socket.create_connection((host, port), timeout=10) as plain:  # no TLS at all
            plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
            answer = plain.recv(100)
            assert answer == b"" or answer[0] == 0x15  # closed, or a TLS alert record
        # Our federation client accepts it with the right ID and the CA's bundle...
        peer = FederationPeer(
            trust_domain=TrustDomain("cluster.local"),
            url=f"https://{host}:{port}/",
            bundle_file=Path("unused"),
        )
        known = parse_bundle(body)
        assert fetch(peer, known).document()["keys"] == doc["keys"]
        # ...and refuses another expected endpoint ID, or a bundle of other roots.
        wrong_id = FederationPeer(
            trust_domain=TrustDomain("cluster.local"),
            url=f"https://{host}:{port}/",
            endpoint_spiffe_id=SpiffeId.parse("spiffe://cluster.local/someone-else"),
        )
        try:
            fetch(wrong_id, known)
            raise AssertionError("an endpoint with the wrong SPIFFE ID was accepted")
        except FetchFailed as exc:
            assert "expected spiffe://cluster.local/someone-else" in str(exc)
        other_root = self_signed_root(
            key=generate_key(), trust_domain=TrustDomain("other.test"), now=datetime.now(UTC)
        )
        other = SpiffeBundle(x509_authorities=(other_root,))
        try:
            fetch(peer, other)
            raise AssertionError("an endpoint not chaining to the known bundle was accepted")
        except FetchFailed as exc:
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
    finally:
        ca.stop()
    assert "Traceback" not in ca.log()


def web_pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A WebPKI-style CA and a server certificate for `localhost`: (ca, cert, key) files."""
    now = datetime.now(UTC)
    ca_key = generate_key()
    root = self_signed_root(key=ca_key, trust_domain=TrustDomain("web-ca.test"), now=now)
    key = generate_key()
    leaf = leaf_certificate(
        spiffe_id=None,
        public_key=key.public_key(),
        issuer_cert=root,
        issuer_key=ca_key,
        now=now,
        ttl=timedelta(hours=1),
        dns_names=("localhost",),
    )
    paths = tmp_path / "web-ca.pem", tmp_path / "web.pem", tmp_path / "web-key.pem"
    write_atomic(paths[0], to_pem(root).encode())
    write_atomic(paths[1], to_pem(leaf).encode())
    write_atomic(paths[2], private_key_pem(key), mode=0o600)
    return paths


def test_https_web_presents_the_operator_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web_ca, cert, key = web_pki(tmp_path)
    ca = start_ca(
        tmp_path / "data", "--bundle-endpoint-addr", "127.0.0.1:0",
        "--bundle-endpoint-profile", "https_web",
        "--bundle-endpoint-cert", str(cert), "--bundle-endpoint-key", str(key),
    )  # fmt: skip
    try:
        _host, port = endpoint_addr(ca)
        ctx = ssl.create_default_context(cafile=str(web_ca))  # hostname checked: localhost
        status, body, der = get("localhost", port, ctx)
        assert status == 200
        assert x509.load_der_x509_certificate(der).serial_number == (
            x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        )
        assert json.loads(body) == admin_bundle(ca)
        # The federation client of the https_web profile: WebPKI trust (here SSL_CERT_FILE).
        peer = FederationPeer(
            trust_domain=TrustDomain("web.test"),
            url=f"https://localhost:{port}/",
            profile="https_web",
        )
        with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(peer, None)  # the web CA is not trusted yet
        monkeypatch.setenv("SSL_CERT_FILE", str(web_ca))
        assert fetch(peer, None).document() == admin_bundle(ca)
    finally:
        ca.stop()


def test_https_web_without_its_files_is_a_start_up_error(tmp_path: Path) -> None:
    done = serve_once(
        tmp_path / "data", "--bundle-endpoint-addr", "127.0.0.1:0",
        "--bundle-endpoint-profile", "https_web",
    )  # fmt: skip
    assert done.returncode == 2
    assert "--bundle-endpoint-cert" in done.stderr and "Traceback" not in done.stderr
