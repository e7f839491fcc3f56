"""The real `openssl` binary, as tests and the demo drive it."""

from __future__ import annotations

import subprocess
from pathlib import Path

# A fresh unencrypted ECDSA P-256 key, for `req`.
NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def openssl(*args: str, cwd: Path | None = None) -> str:
    """Run `openssl ARGS`; its stdout, or CalledProcessError with stderr attached."""
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return result.stdout


def key_and_csr(directory: Path, uri: str, *, subject: str = "/O=demo") -> tuple[Path, Path]:
    """`key.pem` and `csr.pem` in `directory`, the CSR with one critical URI SAN."""
    key, csr = directory / "key.pem", directory / "csr.pem"
    openssl(
        "req",
        "-new",
        *NEW_EC_KEY,
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        subject,
        "-addext",
        f"subjectAltName=critical,URI:{uri}",
    )
    return key, csr


def self_signed_ca(key: Path, subject: str, *, out: Path | None = None, days: int = 3650) -> str:
    """A self-signed CA certificate for a new key at `key`; the PEM (also written to `out`)."""
    args = [
        "req",
        "-x509",
        *NEW_EC_KEY,
        "-keyout",
        str(key),
        "-subj",
        subject,
        "-days",
        str(days),
        "-addext",
        "basicConstraints=critical,CA:true",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]
    if out is not None:
        args += ["-out", str(out)]
        openssl(*args)
        return out.read_text()
    return openssl(*args)


def verify(
    root: Path, leaf: Path, purpose: str, untrusted: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict -purpose PURPOSE` of `leaf` against `root`."""
    cmd = ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(root)]
    if untrusted is not None:
        cmd += ["-untrusted", str(untrusted)]
    return subprocess.run([*cmd, str(leaf)], capture_output=True, text=True)


_INTERMEDIATE_EXT = (
    "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
)


def make_cacerts(d: Path) -> Path:
    """Root and intermediate made by openssl, copied into Istio's `cacerts` layout (returned)."""
    d.mkdir(parents=True)
    (d / "ca.ext").write_text(_INTERMEDIATE_EXT)
    self_signed_ca(d / "root-key.pem", "/O=cluster.local/CN=Test Root CA", out=d / "root-cert.pem")
    openssl(
        "req",
        "-new",
        *NEW_EC_KEY,
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.csr",
        "-subj",
        "/O=cluster.local/CN=Test Intermediate CA",
        cwd=d,
    )
    signer = ("-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial")
    openssl(
        "x509",
        "-req",
        "-in",
        "ca.csr",
        *signer,
        "-days",
        "365",
        "-extfile",
        "ca.ext",
        "-out",
        "ca-cert.pem",
        cwd=d,
    )
    (d / "cert-chain.pem").write_text(
        (d / "ca-cert.pem").read_text() + (d / "root-cert.pem").read_text()
    )
    cacerts = d / "cacerts"
    cacerts.mkdir()
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (cacerts / name).write_bytes((d / name).read_bytes())
    return cacerts
