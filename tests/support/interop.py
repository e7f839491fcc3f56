"""Helpers for the interop tests: the Istio binaries, running them, checking what they got."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.support.gobuild import built_binaries

HERE = Path(__file__).resolve().parents[1] / "interop"
BUILD_SCRIPT = HERE / "build-istio.sh"
ISTIO_CA_SAN = "istiod.istio-system.svc"
RUN_TIMEOUT_S = 120.0


class InteropError(RuntimeError):
    """An Istio binary could not be built or did not behave as a client; carries its output."""


@dataclass(frozen=True)
class IstioBinaries:
    directory: Path
    istio_version: str

    @property
    def istio_csr(self) -> Path:
        return self.directory / "istio-csr"

    @property
    def pilot_agent(self) -> Path:
        return self.directory / "pilot-agent"


def istio_binaries() -> IstioBinaries:
    """$BULWARK_ISTIO_BIN if set, else build (or reuse the cached build) with build-istio.sh."""
    path = built_binaries(BUILD_SCRIPT, ("istio-csr", "pilot-agent"), env_var="BULWARK_ISTIO_BIN")
    version_file = path / "ISTIO_VERSION"
    version = version_file.read_text().strip() if version_file.exists() else "unknown"
    return IstioBinaries(directory=path, istio_version=version)


@dataclass(frozen=True)
class CsrResult:
    """What istio-csr printed: Istio's secret item, or the error Istio's client returned."""

    ok: bool
    error: str
    chain: list[str]
    root: str
    verified: str
    log: str

    @property
    def grpc_code(self) -> str | None:
        """The status code name inside Istio's error text (`rpc error: code = X desc = ...`)."""
        match = re.search(r"rpc error: code = (\w+)", self.error)
        return match.group(1) if match else None


def run_istio_csr(
    istio: IstioBinaries,
    *,
    ca_addr: str,
    root_cert: Path,
    token_file: Path | None,
    namespace: str,
    service_account: str,
    expect_identity: str | None = None,
    ecdsa: bool = False,
    ttl: str = "24h",
    cluster_id: str = "Kubernetes",
    output_certs: Path | None = None,
    prov_cert: Path | None = None,
) -> CsrResult:
    """One CSR with Istio's client, exactly as istio-agent makes it, against `ca_addr`."""
    args = [
        str(istio.istio_csr),
        "-ca-addr",
        ca_addr,
        "-ca-san",
        ISTIO_CA_SAN,
        "-root-cert",
        str(root_cert),
        "-cluster-id",
        cluster_id,
        "-namespace",
        namespace,
        "-service-account",
        service_account,
        "-ttl",
        ttl,
    ]
    if token_file is not None:
        args += ["-token-file", str(token_file)]
    if expect_identity is not None:
        args += ["-expect-identity", expect_identity]
    if ecdsa:
        args.append("-ecdsa")
    if output_certs is not None:
        args += ["-output-certs", str(output_certs)]
    if prov_cert is not None:
        args += ["-prov-cert", str(prov_cert)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise InteropError(
            f"istio-csr exited {proc.returncode} without JSON:\n{proc.stdout}\n{proc.stderr}"
        ) from exc
    if bool(out.get("ok")) != (proc.returncode == 0):
        raise InteropError(f"istio-csr exit code {proc.returncode} disagrees with {out}")
    return CsrResult(
        ok=bool(out.get("ok")),
        error=str(out.get("error", "")),
        chain=list(out.get("chain") or []),
        root=str(out.get("root", "")),
        verified=str(out.get("verified", "")),
        log=proc.stderr,
    )


def write_token(path: Path, token: str) -> Path:
    """Write a token file as the kubelet projects it: 0600, no trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return path


def spiffe_ids(cert_pem: str | bytes) -> list[str]:
    """URI SANs of the first certificate in `cert_pem`."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificates(data)[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(uri) for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)]


def openssl_verify(chain_pem: str, root_file: Path, workdir: Path) -> None:
    """`openssl verify` the leaf of `chain_pem` against `root_file`, the rest as untrusted."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    if len(certs) < 2:
        raise AssertionError(f"a chain of {len(certs)} certificate(s); Istio needs at least 2")
    workdir.mkdir(parents=True, exist_ok=True)
    leaf, untrusted = workdir / "leaf.pem", workdir / "untrusted.pem"
    leaf.write_text(chain_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    untrusted.write_text(chain_pem)
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            str(root_file),
            "-untrusted",
            str(untrusted),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"openssl verify failed:\n{proc.stdout}{proc.stderr}")


def metric(admin_url: str, name: str) -> float:
    """One unlabelled sample of the CA's /metrics, 0 when absent."""
    text = urllib.request.urlopen(f"{admin_url}/metrics", timeout=5).read().decode()
    match = re.search(re.escape(name) + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
