"""`bulwark inspect` (issue #14.3): KU/EKU/signature/AKI/SKI, DER, CSRs, junk, the failing
block, JSON errors, a wrong root in words, and the chain a real TLS server serves."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.cli import main
from certs.csr import build_csr
from certs.keys import generate_key, private_key_pem
from certs.pem import bundle_pem
from certs.profile import leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain

NOW = datetime.now(UTC)
ME = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend")


class Pki:
    def __init__(self, trust_domain: str = "cluster.local") -> None:
        self.key = generate_key()
        self.root = self_signed_root(key=self.key, trust_domain=TrustDomain(trust_domain), now=NOW)
        self.leaf_key = generate_key()
        self.leaf = self.issue(ME, timedelta(hours=1))

    def issue(
        self,
        sid: SpiffeId | None,
        ttl: timedelta,
        *,
        dns: tuple[str, ...] = (),
        now: datetime = NOW,
    ) -> x509.Certificate:
        return leaf_certificate(
            spiffe_id=sid, public_key=self.leaf_key.public_key(), issuer_cert=self.root,
            issuer_key=self.key, now=now, ttl=ttl, dns_names=dns,
        )  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_shows_key_usage_eku_signature_and_key_ids(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = write(tmp_path / "chain.pem", bundle_pem([pki.leaf, pki.root]))
    root = write(tmp_path / "root.pem", bundle_pem([pki.root]))
    code, out, _ = inspect(capsys, chain, "--root", root, "-o", "json")
    leaf = json.loads(out)["certificates"][0]
    assert code == 0
    assert leaf["key_usage"] == ["digitalSignature", "keyEncipherment", "(critical)"]
    assert leaf["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert leaf["signature_algorithm"] == "ecdsa-with-SHA256"
    assert leaf["authority_key_id"] == json.loads(out)["certificates"][1]["subject_key_id"]
    code, human, _ = inspect(capsys, chain, "--root", root)
    for needle in ("key usage   digitalSignature", "ext usage   serverAuth, clientAuth",
                   "signature   ecdsa-with-SHA256", "AKI", "SKI", "chain:  OK"):  # fmt: skip
        assert needle in human


def test_reads_der_certificates_and_csrs_pem_or_der(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    der = write(tmp_path / "leaf.der", pki.leaf.public_bytes(Encoding.DER))
    code, out, _ = inspect(capsys, der, "-o", "json")
    report = json.loads(out)
    assert code == 0 and report["encoding"] == "DER"
    assert report["certificates"][0]["spiffe_id"] == str(ME)
    csr_pem = build_csr(generate_key(), ME)
    from cryptography import x509

    csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(Encoding.DER)
    for name, data in (("req.pem", csr_pem), ("req.der", csr_der)):
        code, out, _ = inspect(capsys, write(tmp_path / name, data), "-o", "json")
        csr = json.loads(out)["csrs"][0]
        assert code == 0 and csr["spiffe_id"] == str(ME) and csr["signature_valid"] is True
    code, human, _ = inspect(capsys, str(tmp_path / "req.pem"))
    assert "[CSR]" in human and "ecdsa-with-SHA256 (valid)" in human


def test_junk_between_blocks_is_reported_with_its_line(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = bundle_pem([pki.leaf]) + "stray text from a bad copy\n" + bundle_pem([pki.root])
    code, out, err = inspect(capsys, write(tmp_path / "c.pem", text))
    line = bundle_pem([pki.leaf]).count("\n") + 1
    assert code == 0 and f"line {line}: 26 byte(s) outside any PEM block" in err
    code, out, _ = inspect(capsys, str(tmp_path / "c.pem"), "-o", "json")
    assert "outside any PEM block" in json.loads(out)["warnings"][0]


def test_names_the_block_that_cannot_be_parsed(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = bundle_pem([pki.leaf])
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    path = write(tmp_path / "c.pem", good + broken)
    code, _, err = inspect(capsys, path)
    line = good.count("\n") + 1
    assert code == 2 and f"block 2 (CERTIFICATE, line {line}) cannot be parsed" in err
    assert len(err.strip().splitlines()) == 1


def test_errors_are_json_with_o_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect #14.3: with --json, errors were plain text."""
    code, out, err = inspect(capsys, str(tmp_path / "none.pem"), "-o", "json")
    assert code == 2 and err == ""
    assert json.loads(out)["error"].startswith(f"cannot read {tmp_path / 'none.pem'}")
    code, out, _ = inspect(capsys, write(tmp_path / "junk", b"\x01\x02junk"), "--json")
    assert code == 2 and "not a DER certificate or CSR" in json.loads(out)["error"]


def test_a_wrong_root_is_explained_in_words(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect #14.3: a wrong root said `candidates exhausted: ... exceeds max depth`."""
    chain = write(tmp_path / "chain.pem", bundle_pem([pki.leaf]))
    other = Pki("other.example")
    code, out, _ = inspect(
        capsys, chain, "--root", write(tmp_path / "o.pem", bundle_pem([other.root]))
    )
    assert code == 1
    assert (
        "wrong root: the chain ends at spiffe://cluster.local/ns/demo/sa/frontend, issued by "
        "'O=cluster.local', but the given root(s) are 'O=other.example'" in out
    )
    assert "candidates exhausted" not in out
    same_name = Pki()  # a root regenerated under the same name
    code, out, _ = inspect(
        capsys, chain, "--root", write(tmp_path / "s.pem", bundle_pem([same_name.root]))
    )
    assert code == 1 and "its key did not sign" in out


def test_an_expired_leaf_is_named(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = pki.issue(ME, timedelta(minutes=1), now=NOW - timedelta(hours=2))
    chain = write(tmp_path / "old.pem", bundle_pem([old]))
    code, out, _ = inspect(
        capsys, chain, "--root", write(tmp_path / "r.pem", bundle_pem([pki.root]))
    )
    assert (
        code == 1
        and "FAILED: the leaf (spiffe://cluster.local/ns/demo/sa/frontend) expired at" in out
    )
    assert re.search(r"\(-\d+h(\d+m)? EXPIRED\)", out)  # the one time-left format: negative


@pytest.fixture
def tls_server(pki: Pki, tmp_path: Path) -> Iterator[str]:
    """A real TLS server on 127.0.0.1:0 serving leaf + root, answering one handshake at a time."""
    served = pki.issue(None, timedelta(hours=1), dns=("svc.example",))
    (tmp_path / "srv.pem").write_text(bundle_pem([served, pki.root]))
    (tmp_path / "srv.key").write_bytes(private_key_pem(pki.leaf_key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_connect_inspects_the_served_chain(
    pki: Pki, tls_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path / "root.pem", bundle_pem([pki.root]))
    code, out, _ = inspect(capsys, "--connect", tls_server, "--servername", "svc.example",
                           "--root", root, "-o", "json")  # fmt: skip
    report = json.loads(out)
    assert report["encoding"] == "TLS" and report["source"] == tls_server
    assert code == 1 and report["svid"]["conforms"] is False  # a DNS-only server certificate
    assert [c["position"] for c in report["certificates"]] == ["leaf", "root (1)"]
    assert report["certificates"][0]["dns_sans"] == ["svc.example"]
    assert report["verification"]["ok"] is True


def test_connect_to_nothing_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = inspect(capsys, "--connect", f"127.0.0.1:{port}")
    assert code == 2 and "is the server running" in err and len(err.strip().splitlines()) == 1
