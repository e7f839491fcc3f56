"""Where the CA's CPU per certificate goes, measured in the same run as the issuance bench:

- `grpc_floor`: a bare grpcio server (same process model: 2 spawned workers, SO_REUSEPORT,
  `grpc.aio` server, TLS) answering CreateCertificate with a fixed response, same load;
- the required-work floor: the same server doing, per call, only what any CA on this stack
  must: look the bearer token up in a verified-token cache, parse the CSR and check its
  signature (cryptography), ECDSA-sign a certificate-sized body; then the same fixed answer.
  With `record_us` added it is the least this stack can cost per certificate;
- `inprocess_issue_us`: the CA's own request path (service, cached-token authentication,
  CSR check, template signing, signature and SVID check) called directly on one event
  loop, no transport and no record;
- `record_us`: the issuance record (SQLite, `AsyncRecorder`) alone, 16 concurrent callers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.workloads import Workload


def _serve(
    port: int, key_pem: bytes, chain_pem: bytes, root_pem: bytes, ready: Any, work: bool
) -> None:
    asyncio.run(_serve_fixed(port, key_pem, chain_pem, root_pem, ready, work))


def _required_work(key_pem: bytes) -> Any:
    """The per-call work no CA on this stack can skip: cached-token lookup, CSR parse and
    signature check, one ECDSA signature over a leaf-sized body."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    tbs = os.urandom(420)  # the size of a workload leaf's TBSCertificate
    verified: dict[str, bool] = {}

    def work(request: Any, metadata: Any) -> bool:
        token = dict(metadata).get("authorization", "")
        verified.setdefault(token, True)
        csr = x509.load_pem_x509_csr(request.csr.encode())
        if not csr.is_signature_valid:
            return False
        key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        return True

    return work


async def _serve_fixed(
    port: int, key_pem: bytes, chain_pem: bytes, root_pem: bytes, ready: Any, work: bool
) -> None:
    import grpc

    from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

    response = ca_pb2.IstioCertificateResponse(cert_chain=[chain_pem.decode(), root_pem.decode()])
    required = _required_work(key_pem) if work else None

    class Fixed(ca_pb2_grpc.IstioCertificateServiceServicer):
        async def CreateCertificate(self, request: Any, context: Any) -> Any:
            metadata = context.invocation_metadata()
            if required is not None and not required(request, metadata):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad CSR signature")
            return response

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(Fixed(), server)
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, chain_pem)]))
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _bare_main(work: Path, required_work: bool) -> None:
    """Two bare worker processes on one port; writes `addr` and the root PEM into `work`."""
    from certs.keys import generate_key, private_key_pem
    from certs.pem import to_pem
    from certs.profile import leaf_certificate, self_signed_root
    from certs.spiffe_id import TrustDomain

    now = datetime.now(UTC)
    ca_key = generate_key()
    root = self_signed_root(key=ca_key, trust_domain=TrustDomain("cluster.local"), now=now)
    key = generate_key()
    leaf = leaf_certificate(
        spiffe_id=None,
        public_key=key.public_key(),
        issuer_cert=root,
        issuer_key=ca_key,
        now=now,
        ttl=timedelta(days=1),
        dns_names=("istiod.istio-system.svc",),
    )
    root_path = work / "bare-root.pem"
    root_path.write_text(to_pem(root))
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for _ in range(2):
        ready = ctx.Event()
        p = ctx.Process(
            target=_serve,
            args=(
                port,
                private_key_pem(key),
                to_pem(leaf).encode(),
                to_pem(root).encode(),
                ready,
                required_work,
            ),
            daemon=True,
        )
        p.start()
        ready.wait(30)
        procs.append(p)
    reserve.close()
    (work / "bare-addr").write_text(f"127.0.0.1:{port}")
    for p in procs:
        p.join()


def start_bare_grpc(
    work: Path, *, required_work: bool = False
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The bare server as one process tree (so /proc accounting sees only it); with
    `required_work`, each call first does the work no CA on this stack can skip."""
    addr_file = work / "bare-addr"
    addr_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.floor",
            str(work),
            *(["work"] if required_work else []),
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 60
    while not addr_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the bare gRPC server did not start")
        time.sleep(0.05)
    return proc, addr_file.read_text(), work / "bare-root.pem"


def inprocess_issue_us(workloads: list[Workload], data_dir: Path) -> float:
    """CPU per certificate of the CA's request path without transport and record."""
    from ca_server.authn.authenticators import Authentication, JwksSource
    from ca_server.authn.impersonation import ImpersonationRules
    from ca_server.authn.jwt_authenticator import JwtAuthenticator
    from ca_server.authn.local_issuer import LOCAL_ISSUER
    from ca_server.authority.material import DirectoryKeyStore, load_or_create
    from ca_server.issuance.service import CertificateService
    from ca_server.issuance.signer import Signer, SigningPolicy
    from ca_server.metrics import CaMetrics
    from certs.spiffe_id import TrustDomain
    from protos.istio.v1.auth import ca_pb2

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bwb-metrics-"))
    td = TrustDomain("cluster.local")
    material = load_or_create(
        DirectoryKeyStore(Path(tempfile.mkdtemp()) / "ca"), td, datetime.now(UTC)
    )
    authn = Authentication(
        [
            JwtAuthenticator(
                keys=JwksSource(jwks_file=data_dir / "token-issuer" / "jwks.json"),
                issuer=LOCAL_ISSUER,
                audiences=["istio-ca"],
                algorithms=["RS256"],
                trust_domain=td,
            )
        ]
    )
    signer = Signer(
        material=lambda: material,
        policy=SigningPolicy(
            csr_san_policy="strict", default_ttl=timedelta(hours=24), max_ttl=timedelta(days=90)
        ),
    )
    service = CertificateService(
        authentication=authn,
        impersonation=ImpersonationRules(
            trust_domain=td, trusted_node_accounts=(), node_policy=None, node_binding=authn
        ),
        signer=signer,
        recorder=None,
        metrics=CaMetrics(),
    )

    class Context:
        def __init__(self, token: str, i: int) -> None:
            self.md = (("authorization", f"Bearer {token}"),)
            self.p = f"ipv4:127.0.0.1:{40000 + i % 32}"

        def invocation_metadata(self) -> Any:
            return self.md

        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

        def peer(self) -> str:
            return self.p

    calls = [
        (ca_pb2.IstioCertificateRequest(csr=w.csr_pem, validity_duration=3600), Context(w.token, i))
        for i, w in enumerate(workloads)
    ]

    async def issue_all() -> float:
        for request, context in calls:  # tokens into the verified-token cache
            await service.CreateCertificate(request, context)
        t0 = time.process_time()
        for request, context in calls:
            await service.CreateCertificate(request, context)
        return (time.process_time() - t0) / len(calls) * 1e6

    return asyncio.run(issue_all())


def record_us(writers: int = 16, count: int = 4000) -> float:
    """CPU per certificate of the SQLite issuance record with concurrent writers."""
    from ca_server.record.entry import IssuedCertificate
    from ca_server.record.ledger import open_recorder
    from ca_server.record.ledger.async_recorder import AsyncRecorder

    managed = open_recorder(f"sqlite:///{tempfile.mkdtemp()}/record.db")
    now = datetime.now(UTC)
    pem = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 9 + "-----END CERTIFICATE-----\n"

    def entry(i: int) -> IssuedCertificate:
        return IssuedCertificate(
            serial=format(2**120 + i, "x"),
            spiffe_id=f"spiffe://cluster.local/ns/b/sa/s{i}",
            namespace="b",
            service_account=f"s{i}",
            not_before=now,
            not_after=now + timedelta(hours=1),
            public_key_sha256="ab" * 32,
            authenticator="jwt",
            subject=f"system:serviceaccount:b:s{i}",
            pod_name="",
            pod_uid="",
            peer="ipv4:127.0.0.1:1",
            cluster_id="",
            csr_sha256="cd" * 32,
            issuer_serial="ef" * 16,
            certificate_pem=pem,
        )

    async def write_all() -> float:
        recorder = AsyncRecorder(managed)

        async def write(k: int) -> None:
            for i in range(k, count, writers):
                await recorder.record(entry(i))

        t0 = time.process_time()
        await asyncio.gather(*(write(k) for k in range(writers)))
        cpu = time.process_time() - t0
        await recorder.close()
        return cpu

    return asyncio.run(write_all()) / count * 1e6


if __name__ == "__main__":
    _bare_main(Path(sys.argv[1]), sys.argv[2:] == ["work"])
