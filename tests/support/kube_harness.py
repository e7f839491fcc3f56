"""A real Kubernetes control plane for tests: etcd + kube-apiserver on loopback.

What controller-runtime's envtest does, in Python: generated serving and client certificates,
a service-account signing key and issuer (so the TokenRequest and TokenReview APIs work),
RBAC authorization, and an admin kubeconfig. The binaries come from `build-peers.sh`
(built from the Go module registry into a cache outside the repo); no fake server anywhere.

Several control planes may run side by side (the multicluster tests start a second one with
the same binaries); each has its own etcd, certificates and service-account key. With
`token_controller`, kube-controller-manager runs beside the API server with only its
service-account token controller, which fills `kubernetes.io/service-account-token` Secrets.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.gobuild import built_binaries
from tests.support.ports import free_port

HERE = Path(__file__).resolve().parents[1] / "k8s"
BUILD_SCRIPT = HERE / "build-peers.sh"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCE = SA_ISSUER
START_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """The control plane could not be built or started; the message carries the log tail."""


def peer_binaries() -> Path:
    """Directory with etcd, kube-apiserver and kubectl: $BULWARK_K8S_BIN, else build (or reuse
    the cached build) with build-peers.sh."""
    return built_binaries(
        BUILD_SCRIPT, ("etcd", "kube-apiserver", "kubectl"), env_var="BULWARK_K8S_BIN"
    )


# -- certificates ------------------------------------------------------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True, slots=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _new_ca(cn: str) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert=cert, key=key)


def _issue(
    issuer: _Issuer,
    subject: x509.Name,
    *,
    server: bool,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


# -- processes ---------------------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(name: str, argv: list[str], log: Path) -> _Proc:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return _Proc(name=name, popen=popen, log=log)


def _wait_ready(proc: _Proc, probe: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise HarnessError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if probe():
                return
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise HarnessError(f"{what} not ready in {START_TIMEOUT} s ({last}):\n{proc.tail()}")


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver; `admin_kubeconfig` has cluster-admin rights."""

    url: str
    ca_file: Path
    admin_kubeconfig: Path
    admin_cert: Path
    admin_key: Path
    sa_signing_key: Path
    kubectl: Path
    workdir: Path
    procs: list[_Proc] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def apiserver(self) -> _Proc:
        return next(proc for proc in self.procs if proc.name == "kube-apiserver")

    def stop_apiserver(self) -> None:
        """Stop the API server alone (etcd keeps the cluster's state for `restart_apiserver`)."""
        self.apiserver().stop()

    def restart_apiserver(self) -> None:
        """Start the stopped API server again with the same flags, port and state."""
        old = self.apiserver()
        if old.popen.poll() is None:
            return
        argv = [str(a) for a in old.popen.args]  # type: ignore[union-attr]
        fresh = _spawn(old.name, argv, old.log.with_suffix(".restarted.log"))
        self.procs[self.procs.index(old)] = fresh
        _wait_ready(
            fresh,
            lambda: _apiserver_ready(self.url, self.ca_file, self.admin_cert, self.admin_key),
            "kube-apiserver",
        )

    def write_token_kubeconfig(self, path: Path, token: str, *, namespace: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (a service account's)."""
        write_kubeconfig(
            path, server=self.url, ca_file=self.ca_file, token=token, namespace=namespace
        )
        return path

    def kubectl_run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.admin_kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    namespace: str = "default",
    token: str | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> None:
    """Write a one-context kubeconfig (JSON is valid YAML); mode 0600, it holds credentials."""
    user: dict[str, str] = {}
    if token is not None:
        user["token"] = token
    if client_cert is not None and client_key is not None:
        user["client-certificate"] = str(client_cert)
        user["client-key"] = str(client_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}
        ],
        "current-context": "test",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)


def start_control_plane(
    bin_dir: Path, workdir: Path, *, token_controller: Path | None = None
) -> ControlPlane:
    """Start etcd then kube-apiserver under `workdir` (then, with `token_controller`,
    kube-controller-manager running only that controller); raise HarnessError with logs on
    failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    pki.mkdir(exist_ok=True)
    ca = _new_ca("bulwark-test-kube-ca")
    _write_cert(pki / "ca.crt", ca.cert)
    serving, serving_key = _issue(
        ca,
        _name("kube-apiserver"),
        server=True,
        dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        ips=("127.0.0.1",),
    )
    _write_cert(pki / "apiserver.crt", serving)
    _write_key(pki / "apiserver.key", serving_key)
    admin, admin_key = _issue(ca, _name("bulwark-test-admin", "system:masters"), server=False)
    _write_cert(pki / "admin.crt", admin)
    _write_key(pki / "admin.key", admin_key)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    procs: list[_Proc] = []
    kubeconfig = workdir / "admin.kubeconfig"
    try:
        etcd_url = _start_etcd(bin_dir, workdir, procs)
        url = _start_apiserver(bin_dir, workdir, pki, etcd_url, procs)
        write_kubeconfig(
            kubeconfig,
            server=url,
            ca_file=pki / "ca.crt",
            client_cert=pki / "admin.crt",
            client_key=pki / "admin.key",
        )
        if token_controller is not None:
            _start_token_controller(token_controller, workdir, pki, kubeconfig, procs)
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise
    return ControlPlane(
        url=url,
        ca_file=pki / "ca.crt",
        admin_kubeconfig=kubeconfig,
        admin_cert=pki / "admin.crt",
        admin_key=pki / "admin.key",
        sa_signing_key=pki / "sa.key",
        kubectl=bin_dir / "kubectl",
        workdir=workdir,
        procs=procs,
    )


def _start_etcd(bin_dir: Path, workdir: Path, procs: list[_Proc]) -> str:
    client_port, peer_port = free_port(), free_port()
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    data = workdir / "etcd-data"
    shutil.rmtree(data, ignore_errors=True)
    proc = _spawn(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync=true",  # test data only: spare the shared disk
            "--log-level=warn",
        ],
        workdir / "etcd.log",
    )
    procs.append(proc)

    def healthy() -> bool:
        return httpx.get(f"{client_url}/health", timeout=2).status_code == 200

    _wait_ready(proc, healthy, "etcd")
    return client_url


def _start_apiserver(
    bin_dir: Path, workdir: Path, pki: Path, etcd_url: str, procs: list[_Proc]
) -> str:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    proc = _spawn(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--api-audiences={API_AUDIENCE}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=none",  # no endpoints for a loopback advertise address
            "--v=1",
        ],
        workdir / "kube-apiserver.log",
    )
    procs.append(proc)
    ca, cert, key = pki / "ca.crt", pki / "admin.crt", pki / "admin.key"
    _wait_ready(proc, lambda: _apiserver_ready(url, ca, cert, key), "kube-apiserver")
    return url


def _apiserver_ready(url: str, ca: Path, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    resp = httpx.get(f"{url}/readyz", verify=ctx, timeout=3)
    return resp.status_code == 200


def _start_token_controller(
    binary: Path, workdir: Path, pki: Path, kubeconfig: Path, procs: list[_Proc]
) -> None:
    """kube-controller-manager with the service-account token controller alone: it signs a
    token into every `kubernetes.io/service-account-token` Secret, as in a real cluster."""
    port = free_port()
    proc = _spawn(
        "kube-controller-manager",
        [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            "--controllers=serviceaccount-token",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'kcm-certs'}",
            "--v=1",
        ],
        workdir / "kube-controller-manager.log",
    )
    procs.append(proc)

    def healthy() -> bool:
        # /healthz is always allowed; the serving certificate is self-signed.
        return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=3).text == "ok"

    _wait_ready(proc, healthy, "kube-controller-manager")
