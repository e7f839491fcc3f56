"""TEST-ONLY STAND-IN: a CA that serves `IstioCertificateService` but no `WorkloadIdentityService`.

Why it exists: the real Bulwark CA always serves `bulwark.v1.WorkloadIdentityService`, so it
cannot play a CA without it (Istio's istiod, or a Bulwark older than the service) on demand.
The agent's fallback for such a CA (UNIMPLEMENTED: JWT bundle streams still answer with the own
trust domain and no keys, FetchJWTSVID says what the CA said) needs one. Everything else about
JWT-SVIDs and bundles is tested against the real CA (tests/integration/agent/test_jwt_workload_api.py,
tests/integration/federation/).

`IstioOnlyCa`: one in-process grpc.aio server on 127.0.0.1:0, TLS with a certificate for
`istiod.istio-system.svc` signed by the real CA's root (so the agent's `CA_ROOT_CA` stays the
real one). `CreateCertificate` is forwarded byte for byte, with the caller's headers, to the
real running CA (certificates stay real); any other method gets gRPC's own UNIMPLEMENTED,
since nothing else is registered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from certs.keys import load_private_key
from certs.pem import load_certificates, to_pem
from tests.support.ca_process import RunningCa

CA_SAN = "istiod.istio-system.svc"
ISTIO_SERVICE = "istio.v1.auth.IstioCertificateService"


class IstioOnlyCa:
    """See the module docstring. `start()` returns the address for the agent's `ca_addr`."""

    def __init__(self, upstream: RunningCa) -> None:
        self.upstream = upstream
        self.addr = ""
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> str:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._istio_handler(),))
        key_pem, cert_pem = self._serving_credentials()
        port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)])
        )
        await server.start()
        self._server = server
        creds = grpc.ssl_channel_credentials(self.upstream.root_cert_path.read_bytes())
        self._channel = grpc.aio.secure_channel(
            self.upstream.grpc_addr, creds, options=(("grpc.ssl_target_name_override", CA_SAN),)
        )
        self.addr = f"127.0.0.1:{port}"
        return self.addr

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self._channel is not None:
            await self._channel.close()

    def _serving_credentials(self) -> tuple[bytes, bytes]:
        root = load_certificates(self.upstream.root_cert_path.read_bytes())[0]
        root_key = load_private_key((self.upstream.data_dir / "ca" / "ca-key.pem").read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "istio-only-ca")]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_SAN)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return key_pem, to_pem(cert).encode()

    def _istio_handler(self) -> grpc.GenericRpcHandler:
        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            assert self._channel is not None
            call = self._channel.unary_unary(f"/{ISTIO_SERVICE}/CreateCertificate")
            try:
                return await call(request, metadata=tuple(context.invocation_metadata() or ()))  # type: ignore[no-any-return]
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise

        handler = grpc.unary_unary_rpc_method_handler(forward)
        return grpc.method_handlers_generic_handler(ISTIO_SERVICE, {"CreateCertificate": handler})
