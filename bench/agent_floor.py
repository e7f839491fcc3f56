"""The agent's library floor: the resident memory of its libraries doing only the agent's work.

`python -m bench.agent_floor CA_ADDR ROOT_PEM TOKEN_FILE SPIFFE_ID SOCKET` imports
grpcio, cryptography and protobuf, serves a grpc.aio server on a unix socket, makes an
ECDSA P-256 key and a CSR, gets one certificate from the CA over TLS, verifies the chain,
loads the Envoy SDS stubs (xds-protos) and builds the SDS Secret, waits a second and prints
its VmRSS and RssAnon as JSON, with `first_cert_s`: the time from BENCH_SPAWNED_AT (the
parent's time.time() just before it spawned this process) to the verified certificate. No
agent code, no status port: what any agent built on these libraries pays at least. Like
`python -m agent`, it runs without Python's OpenSSL bindings (see agent/__main__.py).
"""

from __future__ import annotations

import sys

for _name in ("ssl", "_hashlib"):
    if _name not in sys.modules:
        sys.modules[_name] = None  # type: ignore[assignment]

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.verification import PolicyBuilder, Store  # noqa: E402
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402, F401

from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc  # noqa: E402

ISTIOD_SAN = "istiod.istio-system.svc"


def memory_mb() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(rest.split()[0]) / 1024
    return {"rss_mb": out["VmRSS"], "anon_mb": out["RssAnon"]}


async def floor(addr: str, root: Path, token: Path, spiffe_id: str, socket: Path) -> None:
    server = grpc.aio.server()
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hashes.SHA256())
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=root.read_bytes())
    options = (("grpc.ssl_target_name_override", ISTIOD_SAN),)
    async with grpc.aio.secure_channel(addr, credentials, options=options) as channel:
        response = await ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
            ca_pb2.IstioCertificateRequest(
                csr=csr.public_bytes(serialization.Encoding.PEM).decode(), validity_duration=3600
            ),
            metadata=(("authorization", f"Bearer {token.read_text().strip()}"),),
        )
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in response.cert_chain]
    verifier = (
        PolicyBuilder().store(Store(chain[-1:])).time(datetime.now(UTC)).build_client_verifier()
    )
    verifier.verify(chain[0], chain[1:-1])
    secret = secret_pb2.Secret(name="default")
    tls = common_pb2.TlsCertificate()
    tls.certificate_chain.inline_bytes = "".join(response.cert_chain).encode()
    tls.private_key.inline_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    secret.tls_certificate.CopyFrom(tls)
    spawned = float(os.environ.get("BENCH_SPAWNED_AT", "nan"))
    first_cert_s = time.time() - spawned
    await asyncio.sleep(1.0)
    print(json.dumps({**memory_mb(), "first_cert_s": first_cert_s}))
    await server.stop(None)


if __name__ == "__main__":
    addr, root, token, spiffe_id, socket = sys.argv[1:6]
    asyncio.run(floor(addr, Path(root), Path(token), spiffe_id, Path(socket)))
