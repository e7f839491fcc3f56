"""CA issuance benchmark: Bulwark over gRPC+TLS+JWT vs cfssl over HTTP, same CSRs, same load."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procstat
from bench.workloads import NAMESPACE, Workload, save
from tests.support.ca_process import RunningCa, start_ca

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def run_loadgen(
    mode: str,
    addr: str,
    server_pid: int,
    workloads_file: Path,
    *,
    concurrency: int,
    root: Path | None = None,
    duration_s: float = 8.0,
    warmup_s: float = 1.0,
    max_requests: int = 20_000,
    batch_size: int = 32,
    node_token_file: Path | None = None,
) -> dict[str, Any]:
    """One load generator run (bench/loadgen.py); `mode` "batch" sends a node agent's batches
    of `batch_size` under the token in `node_token_file`."""
    cmd = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        mode,
        "--addr",
        addr,
        "--workloads",
        str(workloads_file),
        "--server-pid",
        str(server_pid),
        "--concurrency",
        str(concurrency),
        "--duration-s",
        str(duration_s),
        "--warmup-s",
        str(warmup_s),
        "--max-requests",
        str(max_requests),
    ]
    if root is not None:
        cmd += ["--root", str(root)]
    if mode == "batch":
        assert node_token_file is not None, "batch mode needs the node agent's token"
        cmd += ["--batch-size", str(batch_size), "--node-token-file", str(node_token_file)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# The bench's node agent and the workloads it may impersonate (bench/workloads.py's namespace).
NODE_AGENT = ("bench-system", "node-agent")


def start_bulwark(data_dir: Path, *extra: str) -> RunningCa:
    """Bulwark with 2 workers, TLS, the embedded token issuer and the SQLite record; its node
    agent (`NODE_AGENT`) may impersonate every bench workload (--node-identity-policy)."""
    workers = 2
    if "--workers" in extra:
        i = extra.index("--workers")
        workers = int(extra[i + 1])
        extra = extra[:i] + extra[i + 2 :]
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = data_dir.parent / "node-identity-policy.yaml"
    policy.write_text(json.dumps({"/".join(NODE_AGENT): [f"{NAMESPACE}/*"]}))
    return start_ca(
        data_dir,
        "--mtls-grpc-addr",
        "",
        "--node-identity-policy",
        str(policy),
        *extra,
        workers=workers,
    )


def node_token_file(ca: RunningCa, work: Path) -> Path:
    """The bench node agent's token (2 h), written where the batch load generator reads it."""
    path = work / "node-agent.token"
    path.write_text(ca.mint_token(*NODE_AGENT, ttl_s=7200))
    return path


def bench_bulwark(
    work: Path,
    workloads: list[Workload],
    concurrencies: list[int],
    duration_s: float,
    profile_to: Path | None = None,
) -> list[dict[str, Any]]:
    """Bulwark with 2 workers, record on (SQLite), at each concurrency."""
    data_dir = work / "bulwark"
    wl_file = work / "workloads.json"
    save(workloads, wl_file)
    ca = start_bulwark(data_dir)
    assert ca.process is not None
    try:
        results = []
        for c in concurrencies:
            results.append(
                run_loadgen(
                    "grpc",
                    ca.grpc_addr,
                    ca.process.pid,
                    wl_file,
                    concurrency=c,
                    root=ca.root_cert_path,
                    duration_s=duration_s,
                )
            )
        if profile_to is not None:
            profile_worker(ca, wl_file, profile_to, duration_s=min(duration_s, 6.0))
        return results
    finally:
        ca.stop()


def profile_worker(
    ca: RunningCa,
    wl_file: Path,
    svg: Path,
    *,
    duration_s: float,
    mode: str = "grpc",
    concurrency: int = 32,
    **load_args: Any,
) -> bool:
    """A py-spy flame graph of one CA worker under load (`mode` and `concurrency` of the load
    generator; a window not measured for CPU: sampling stops the process). False when py-spy
    is not installed."""
    import shutil
    import threading

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return False
    assert ca.process is not None
    workers = procstat.descendants(ca.process.pid)[1:]
    if not workers:
        return False
    load = threading.Thread(
        target=run_loadgen,
        args=(mode, ca.grpc_addr, ca.process.pid, wl_file),
        kwargs={
            "concurrency": concurrency,
            "root": ca.root_cert_path,
            "duration_s": duration_s + 2,
            **load_args,
        },
    )
    load.start()
    time.sleep(2.5)
    svg.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            spy,
            "record",
            "-r",
            "100",
            "-d",
            str(int(duration_s)),
            "-f",
            "flamegraph",
            "-o",
            str(svg),
            "-p",
            str(workers[-1]),
        ],
        capture_output=True,
        timeout=duration_s + 60,
        check=False,
    )
    load.join()
    return svg.exists()


def cfssl_files(work: Path) -> tuple[Path, Path, Path]:
    """An ECDSA P-256 CA (same profile as Bulwark's self-signed root) and a signing profile."""
    from certs.keys import KeyType, generate_key, private_key_pem
    from certs.pem import to_pem
    from certs.profile import self_signed_root
    from certs.spiffe_id import TrustDomain

    key = generate_key(KeyType.EC_P256)
    root = self_signed_root(
        key=key, trust_domain=TrustDomain("cluster.local"), now=datetime.now(UTC)
    )
    d = work / "cfssl"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.pem").write_text(to_pem(root))
    (d / "ca-key.pem").write_bytes(private_key_pem(key))
    config = {
        "signing": {
            "default": {
                "expiry": "1h",
                "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            }
        }
    }
    (d / "config.json").write_text(json.dumps(config))
    return d / "ca.pem", d / "ca-key.pem", d / "config.json"


def start_cfssl(binary: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    ca, ca_key, config = cfssl_files(work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "cfssl.log", "wb")  # noqa: SIM115 (owned by the process)
    proc = subprocess.Popen(
        [
            str(binary),
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port),
            "-ca",
            str(ca),
            "-ca-key",
            str(ca_key),
            "-config",
            str(config),
            "-loglevel",
            "4",
        ],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"cfssl did not start: {(work / 'cfssl.log').read_text()}")


if __name__ == "__main__":
    from bench.workloads import make_workloads

    work = Path(tempfile.mkdtemp(prefix="bulwark-bench-"))
    wl = make_workloads(work / "bulwark", 1000)
    for r in bench_bulwark(work, wl, [int(c) for c in sys.argv[1:]] or [32], 8.0):
        r.pop("latencies_ms")
        print(r)


def crypto_limit_us(workloads: list[Workload], seconds: float = 3.0) -> dict[str, float]:
    """CPU per certificate of only the cryptography an issuance needs, one core, tight loop:
    verify the CSR's signature, ECDSA P-256 sign a certificate, verify an RS256 token."""
    import os

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    from certs.keys import KeyType, generate_key

    csrs = [cx509.load_pem_x509_csr(w.csr_pem.encode()) for w in workloads[:200]]
    ca_key = generate_key(KeyType.EC_P256)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    tbs = os.urandom(420)  # the size of a workload leaf's TBSCertificate
    token_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_pub = token_key.public_key()
    signing_input = os.urandom(700)
    token_sig = token_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    parts: dict[str, Callable[[int], object]] = {
        "csr_verify_us": lambda i: csrs[i % len(csrs)].is_signature_valid,
        "cert_sign_us": lambda i: ca_key.sign(tbs, ec.ECDSA(hashes.SHA256())),
        "token_verify_us": lambda i: token_pub.verify(
            token_sig, signing_input, padding.PKCS1v15(), hashes.SHA256()
        ),
    }
    out: dict[str, float] = {}
    for name, op in parts.items():
        n = 0
        t0 = time.process_time()
        deadline = time.monotonic() + seconds / len(parts)
        while time.monotonic() < deadline:
            for i in range(n, n + 100):
                op(i)
            n += 100
        out[name] = (time.process_time() - t0) / n * 1e6
    out["total_us"] = sum(out.values())
    return out


def cfssl_writes_uri_san(binary: Path, work: Path, workload: Workload) -> bool:
    """Whether cfssl's leaf carries the CSR's SPIFFE URI SAN (equivalent signing work)."""
    import urllib.request

    from cryptography import x509 as cx509

    proc, addr = start_cfssl(binary, work / "uri-check")
    try:
        body = json.dumps({"certificate_request": workload.csr_pem}).encode()
        req = urllib.request.Request(f"http://{addr}/api/v1/cfssl/sign", data=body)
        with urllib.request.urlopen(req, timeout=10) as resp:
            pem = json.loads(resp.read())["result"]["certificate"]
        cert = cx509.load_pem_x509_certificate(pem.encode())
        sans = cert.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
        return bool(sans.get_values_for_type(cx509.UniformResourceIdentifier))
    finally:
        proc.terminate()
        proc.wait(10)
