"""Issue 4's part of `make demo`: two agents, SVIDs over the Workload API and SDS, mTLS, rotation.

The backend's SVID comes from the PyPI `spiffe` client over the SPIFFE
Workload API, the frontend's over Envoy's SDS; a TLS server and client built
from them complete an mTLS handshake and check each other's SPIFFE ID. The
frontend runs with 6-second certificates so the demo can watch an SDS push.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NAMESPACE = "demo"
TRUST_DOMAIN = "cluster.local"
FRONTEND_TTL = "6s"


@dataclass
class DemoAgent:
    account: str
    process: subprocess.Popen[bytes]
    socket: Path
    status_url: str
    log: Path

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.account}"


class AgentDemo:
    """Steps of the agent demo; `Demo` (demo.py) calls them and prints the summary."""

    def __init__(self, work: Path, bulwark: str) -> None:
        self.work = work
        self.bulwark = bulwark
        self.agents: dict[str, DemoAgent] = {}

    # -- steps ---------------------------------------------------------------------------
    def start_agents(self, ca_data_dir: Path, grpc_addr: str, root: Path) -> str:
        started = time.monotonic()
        for account, ttl in (("frontend", FRONTEND_TTL), ("backend", "1h")):
            self.agents[account] = self._spawn(account, ttl, ca_data_dir, grpc_addr, root)
        for agent in self.agents.values():
            self._wait_ready(agent)
            print(f"{agent.spiffe_id}: socket {agent.socket}, status {agent.status_url}")
        took = time.monotonic() - started
        return f"frontend and backend agents hold certificates after {took:.1f}s"

    def mtls(self) -> str:
        backend = self._backend_via_workload_api()
        frontend = self._frontend_via_sds()
        server_saw, client_saw = _handshake(backend, frontend)
        print(f"server (backend SVID) saw client {server_saw}")
        print(f"client (frontend SVID) saw server {client_saw}")
        if server_saw != self.agents["frontend"].spiffe_id:
            raise RuntimeError(f"server expected the frontend, got {server_saw}")
        if client_saw != self.agents["backend"].spiffe_id:
            raise RuntimeError(f"client expected the backend, got {client_saw}")
        return "mTLS handshake OK; each side checked the peer's SPIFFE ID"

    def rotation(self) -> str:
        agent = self.agents["frontend"]
        with grpc.insecure_channel(f"unix:{agent.socket}") as channel:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            requests = _RequestQueue()
            requests.put(
                discovery_pb2.DiscoveryRequest(
                    node={"id": "demo-envoy"}, resource_names=["default"], type_url=SECRET_TYPE
                )
            )
            responses = stub.StreamSecrets(iter(requests), timeout=30)
            first = next(responses)
            old = _leaf(first).serial_number
            requests.put(
                discovery_pb2.DiscoveryRequest(
                    resource_names=["default"], response_nonce=first.nonce, type_url=SECRET_TYPE
                )
            )
            print(
                f"SDS stream open; serving serial {old:x}, valid until "
                f"{_leaf(first).not_valid_after_utc:%H:%M:%S} (SECRET_TTL={FRONTEND_TTL})"
            )
            waited = time.monotonic()
            push = next(responses)
            new = _leaf(push)
            print(
                f"SDS push after {time.monotonic() - waited:.1f}s: serial {old:x} -> "
                f"{new.serial_number:x} (version {first.version_info} -> {push.version_info})"
            )
            requests.close()
            responses.cancel()
        if new.serial_number == old:
            raise RuntimeError("the pushed certificate is the old one")
        return "short-TTL rotation pushed over the open SDS stream"

    def status(self) -> str:
        for agent in self.agents.values():
            out = subprocess.run(
                [self.bulwark, "agent", "status", "--socket", str(agent.socket)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            print(f"$ bulwark agent status --socket {agent.socket.name}\n{out.stdout.rstrip()}")
            if out.returncode != 0:
                raise RuntimeError(f"bulwark agent status failed: {out.stderr}")
        return "bulwark agent status shows both agents"

    def stop(self) -> str:
        codes = {}
        for name, agent in self.agents.items():
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
            codes[name] = agent.process.wait(10)
        self.agents.clear()
        if any(codes.values()):
            raise RuntimeError(f"agents exited with {codes}")
        return "both agents stopped on SIGTERM with exit code 0"

    def cleanup(self) -> None:
        for agent in self.agents.values():
            if agent.process.poll() is None:
                agent.process.kill()
                agent.process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- agent {a.account} log (tail) ---\n" + a.log.read_text(errors="replace")[-2000:]
            for a in self.agents.values()
        )

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(self, account: str, ttl: str, ca_data: Path, addr: str, root: Path) -> DemoAgent:
        token = self.work / f"{account}.token"
        minted = subprocess.run(
            [
                self.bulwark,
                "token",
                "mint",
                "--data-dir",
                str(ca_data),
                "--namespace",
                NAMESPACE,
                "--service-account",
                account,
                "--ttl",
                "10m",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        token.write_text(minted.stdout.strip())
        sock = self.work / f"{account}.sock"
        ready = self.work / f"{account}-ready.json"
        log = self.work / f"{account}-agent.log"
        agent_env = {
            "POD_NAMESPACE": NAMESPACE,
            "SERVICE_ACCOUNT": account,
            "CA_ADDR": addr,
            "CA_ROOT_CA": str(root),
            "ISTIOD_SAN": "istiod.istio-system.svc",
            "SECRET_TTL": ttl,
            "BULWARK_TOKEN_PATH": str(token),
        }
        env = {**os.environ, **agent_env}
        cmd = [
            self.bulwark,
            "agent",
            "run",
            "--socket",
            str(sock),
            "--status-addr",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
        ]
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in agent_env.items())
        print(f"$ {shown} {shlex.join(['bulwark', *cmd[1:]])}")
        with open(log, "ab") as out:
            process = subprocess.Popen(cmd, cwd=self.work, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent {account} did not start:\n{log.read_text()}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        return DemoAgent(account, process, sock, f"http://{info['status_addr']}", log)

    def _wait_ready(self, agent: DemoAgent) -> None:
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(agent.status_url + "/healthz/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"agent {agent.account} never became ready")

    def _backend_via_workload_api(self) -> tuple[Path, Path, Path]:
        with warnings.catch_warnings():
            # py-spiffe imports cryptography's DSA types, which cryptography deprecates; the
            # demo uses no DSA, and a library's deprecation notice is no part of its output.
            warnings.filterwarnings(
                "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning
            )
            from spiffe import WorkloadApiClient

        agent = self.agents["backend"]
        client = WorkloadApiClient(socket_path=f"unix://{agent.socket}")
        try:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
        finally:
            client.close()
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None
        from cryptography.hazmat.primitives import serialization

        pem = serialization.Encoding.PEM
        cert, key, roots = (self.work / f"backend-{n}.pem" for n in ("chain", "key", "roots"))
        cert.write_bytes(b"".join(c.public_bytes(pem) for c in svid.cert_chain))
        key.write_bytes(
            svid.private_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key.chmod(0o600)
        roots.write_bytes(b"".join(c.public_bytes(pem) for c in bundle.x509_authorities))
        print(
            f"backend: py-spiffe WorkloadApiClient fetched {svid.spiffe_id} "
            f"(serial {svid.leaf.serial_number:x})"
        )
        return cert, key, roots

    def _frontend_via_sds(self) -> tuple[Path, Path, Path]:
        agent = self.agents["frontend"]
        with grpc.insecure_channel(f"unix:{agent.socket}") as channel:
            response = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(
                discovery_pb2.DiscoveryRequest(
                    node={"id": "demo-client"},
                    type_url=SECRET_TYPE,
                    resource_names=["default", "ROOTCA"],
                ),
                timeout=10,
            )
        secrets = {}
        for item in response.resources:
            secret = secret_pb2.Secret()
            item.Unpack(secret)
            secrets[secret.name] = secret
        cert, key, roots = (self.work / f"frontend-{n}.pem" for n in ("chain", "key", "roots"))
        tls = secrets["default"].tls_certificate
        cert.write_bytes(tls.certificate_chain.inline_bytes)
        key.write_bytes(tls.private_key.inline_bytes)
        key.chmod(0o600)
        roots.write_bytes(secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes)
        leaf = x509.load_pem_x509_certificate(tls.certificate_chain.inline_bytes)
        print(
            f"frontend: SDS FetchSecrets returned default + ROOTCA (serial {leaf.serial_number:x})"
        )
        return cert, key, roots


class _RequestQueue:
    """A blocking iterator of SDS requests for the synchronous gRPC stream."""

    def __init__(self) -> None:
        self._items: list[object] = []
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def __iter__(self) -> _RequestQueue:
        return self

    def __next__(self) -> object:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                raise StopIteration
            return self._items.pop(0)


def _leaf(response: discovery_pb2.DiscoveryResponse) -> x509.Certificate:
    secret = secret_pb2.Secret()
    response.resources[0].Unpack(secret)
    return x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)


def _spiffe_id(der: bytes | None) -> str:
    if der is None:
        return "(no certificate)"
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ",".join(sans.get_values_for_type(x509.UniformResourceIdentifier))


def _handshake(
    server_files: tuple[Path, Path, Path], client_files: tuple[Path, Path, Path]
) -> tuple[str, str]:
    """Run one mTLS exchange on loopback; returns (ID the server saw, ID the client saw)."""
    s_chain, s_key, s_roots = server_files
    c_chain, c_key, c_roots = client_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(s_chain, s_key)
    server_ctx.load_verify_locations(s_roots)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False  # SPIFFE: the peer is named by its URI SAN, checked below
    client_ctx.load_cert_chain(c_chain, c_key)
    client_ctx.load_verify_locations(c_roots)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, str] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["server"] = _spiffe_id(tls.getpeercert(binary_form=True))
            tls.sendall(b"hello " + seen["server"].encode() + b"\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw) as tls,
        ):
            seen["client"] = _spiffe_id(tls.getpeercert(binary_form=True))
            cipher = tls.cipher()
            assert cipher is not None  # the handshake is done
            print(f"{tls.version()} {cipher[0]}; server said: {tls.recv(200).decode().strip()}")
    finally:
        thread.join(10)
        listener.close()
    return seen["server"], seen["client"]
