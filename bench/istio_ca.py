"""Istio's own CA as the bench peer: istio-ca/cmd/istio-ca (istiod's CA, CA server, gRPC
options and JWT authenticator behind a thin main), built by build-istio-ca.sh.

Its JwtAuthenticator reads the bench token issuer's JWKS over HTTP: a small HTTP server in this
process serves `<data-dir>/token-issuer/jwks.json`, the key the bench workloads' RS256 tokens
are signed with (bench/workloads.py).
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.gobuild import built_binaries

BENCH = Path(__file__).resolve().parent
BUILD_SCRIPT = BENCH / "build-istio-ca.sh"
AUDIENCE = "istio-ca"
START_TIMEOUT_S = 30.0


def istio_ca_binary() -> Path:
    """$BULWARK_ISTIO_CA_BIN if set, else build (or reuse the cached build)."""
    return built_binaries(BUILD_SCRIPT, ("istio-ca",), env_var="BULWARK_ISTIO_CA_BIN") / "istio-ca"


class _JwksServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        self.body = body
        super().__init__(("127.0.0.1", 0), _JwksHandler)


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    server: _JwksServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class IstioCa:
    process: subprocess.Popen[bytes]
    addr: str
    root: Path
    jwks: _JwksServer
    log_path: Path
    _thread: threading.Thread = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.jwks.shutdown()
        self.jwks.server_close()


def start_istio_ca(binary: Path, work: Path, issuer_dir: Path) -> IstioCa:
    """Istio's CA on 127.0.0.1:<free port>, trusting the token issuer of `issuer_dir`."""
    from ca_server.authn.local_issuer import LOCAL_ISSUER, LocalIssuer

    issuer = LocalIssuer.load_or_create(issuer_dir)
    jwks = _JwksServer(issuer.jwks_path.read_bytes())
    thread = threading.Thread(target=jwks.serve_forever, daemon=True)
    thread.start()
    d = work / "istio-ca"
    d.mkdir(parents=True, exist_ok=True)
    log_path = d / "istio-ca.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "-dir",
                str(d),
                "-issuer",
                LOCAL_ISSUER,
                "-audience",
                AUDIENCE,
                "-jwks-url",
                f"http://127.0.0.1:{jwks.server_address[1]}/jwks.json",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
    ca = IstioCa(process, "", d / "root-cert.pem", jwks, log_path, thread)
    try:
        ca.addr = _listening(process)
    except BaseException:
        ca.stop()
        raise
    return ca


def _listening(process: subprocess.Popen[bytes]) -> str:
    """The address from the `listening <addr>` line the main prints once it serves."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    line = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(b"listening "):
            return line.split()[1].decode()
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"istio-ca did not start (exit {process.poll()}, last line {line!r})")
