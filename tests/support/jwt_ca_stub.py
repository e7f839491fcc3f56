"""TEST-ONLY STAND-IN for the CA's `bulwark.v1.WorkloadIdentityService` (not yet built: H7).

Allowed because it stands in for a component that does not exist yet; the
end-to-end tests switch to the real CA once the CA serves `MintJWTSVID` and
`FetchTrustBundles` (then `JwtCaStub` goes: point the agent at the CA itself).

One in-process grpc.aio server on 127.0.0.1:0, TLS with a certificate for
`istiod.istio-system.svc` signed by the real CA's root (so the agent's
`CA_ROOT_CA` stays the real one), serving:
- `IstioCertificateService/CreateCertificate`: forwarded byte for byte, with
  the caller's headers, to the real running CA (certificates stay real);
- `WorkloadIdentityService/MintJWTSVID`: an ES256 JWT-SVID for the caller's
  token's service account (token verified with the real CA's embedded token
  issuer key), `sub`, `aud`, `exp`, `iat`, header `kid` and `typ: JWT`;
- `WorkloadIdentityService/FetchTrustBundles`: the own trust domain (the real
  CA's root as `x509-svid`, the stub's JWT keys as `jwt-svid`) and any
  federated trust domain a test adds.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from certs.keys import load_private_key
from certs.pem import load_certificates, to_pem
from protos.bulwark.v1 import identity_pb2
from tests.support.ca_process import RunningCa

CA_SAN = "istiod.istio-system.svc"
ISTIO_SERVICE = "istio.v1.auth.IstioCertificateService"
IDENTITY_SERVICE = "bulwark.v1.WorkloadIdentityService"


@dataclass
class SigningKey:
    kid: str
    key: ec.EllipticCurvePrivateKey


@dataclass
class Domain:
    """A trust domain's authorities as the stub publishes them."""

    roots: list[x509.Certificate] = field(default_factory=list)
    keys: list[SigningKey] = field(default_factory=list)


def jwk_of(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.key.public_key(), as_dict=True)
    jwk.update(kid=key.kid, use="jwt-svid", alg="ES256")
    return jwk


def new_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()))


def bundle_document(domain: Domain, *, sequence: int, refresh_hint: int) -> bytes:
    keys: list[dict[str, Any]] = [
        {
            "use": "x509-svid",
            "kty": "EC",
            "x5c": [base64.b64encode(c.public_bytes(Encoding.DER)).decode()],
        }
        | _coords(c)
        for c in domain.roots
    ]
    keys += [jwk_of(k) for k in domain.keys]
    doc = {"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": refresh_hint}
    return json.dumps(doc).encode()


def _coords(cert: x509.Certificate) -> dict[str, Any]:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
        return {k: jwk[k] for k in ("crv", "x", "y")}
    return {}


def sign_jwt(key: SigningKey, claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(
        claims, key.key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT", **headers}
    )


class JwtCaStub:
    """See the module docstring. `start()` returns the address for the agent's `ca_addr`."""

    def __init__(self, upstream: RunningCa, *, trust_domain: str = "cluster.local") -> None:
        self.upstream = upstream
        self.trust_domain = trust_domain
        root = load_certificates(upstream.root_cert_path.read_bytes())[0]
        self.domains: dict[str, Domain] = {trust_domain: Domain(roots=[root], keys=[new_key("k1")])}
        self.sequence = 1
        self.refresh_hint = 1
        self.jwt_ttl = timedelta(minutes=5)
        self.mint_calls: list[tuple[list[str], str]] = []  # (audiences, the caller's header keys)
        self.bundle_calls = 0
        self.serve_identity = True  # False: the CA has no WorkloadIdentityService (UNIMPLEMENTED)
        self.addr = ""
        self._server: grpc.aio.Server | None = None
        self._upstream_channel: grpc.aio.Channel | None = None
        from ca_server.token_issuer import LocalIssuer

        issuer = LocalIssuer.load_or_create(upstream.data_dir)
        self._token_keys = jwt.PyJWKSet.from_dict(issuer.jwks())

    @property
    def signing_key(self) -> SigningKey:
        return self.domains[self.trust_domain].keys[-1]

    def rotate_key(self, kid: str) -> SigningKey:
        """Publish a new key and sign with it from now on (the old one stays published)."""
        key = new_key(kid)
        self.domains[self.trust_domain].keys.append(key)
        self.sequence += 1
        return key

    def federate(self, name: str, domain: Domain) -> None:
        self.domains[name] = domain
        self.sequence += 1

    async def start(self) -> str:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._istio_handler(), self._identity_handler()))
        key_pem, cert_pem = self._serving_credentials()
        port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)])
        )
        await server.start()
        self._server = server
        creds = grpc.ssl_channel_credentials(self.upstream.root_cert_path.read_bytes())
        self._upstream_channel = grpc.aio.secure_channel(
            self.upstream.grpc_addr, creds, options=(("grpc.ssl_target_name_override", CA_SAN),)
        )
        self.addr = f"127.0.0.1:{port}"
        return self.addr

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self._upstream_channel is not None:
            await self._upstream_channel.close()

    def _serving_credentials(self) -> tuple[bytes, bytes]:
        root = load_certificates(self.upstream.root_cert_path.read_bytes())[0]
        root_key = load_private_key((self.upstream.data_dir / "ca" / "ca-key.pem").read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwt-ca-stub")]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_SAN)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return key_pem, to_pem(cert).encode()

    def _istio_handler(self) -> grpc.GenericRpcHandler:
        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            assert self._upstream_channel is not None
            call = self._upstream_channel.unary_unary(f"/{ISTIO_SERVICE}/CreateCertificate")
            try:
                return await call(request, metadata=tuple(context.invocation_metadata() or ()))  # type: ignore[no-any-return]
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise

        handler = grpc.unary_unary_rpc_method_handler(forward)
        return grpc.method_handlers_generic_handler(ISTIO_SERVICE, {"CreateCertificate": handler})

    def _identity_handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            "MintJWTSVID": grpc.unary_unary_rpc_method_handler(
                self._mint,
                request_deserializer=identity_pb2.MintJWTSVIDRequest.FromString,
                response_serializer=identity_pb2.MintJWTSVIDResponse.SerializeToString,
            ),
            "FetchTrustBundles": grpc.unary_unary_rpc_method_handler(
                self._bundles,
                request_deserializer=identity_pb2.FetchTrustBundlesRequest.FromString,
                response_serializer=identity_pb2.FetchTrustBundlesResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(IDENTITY_SERVICE, handlers)

    async def _mint(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not self.serve_identity:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        metadata = dict(context.invocation_metadata() or ())
        self.mint_calls.append((list(request.audience), ",".join(sorted(metadata))))
        spiffe_id = self._caller(metadata.get("authorization", ""))
        if spiffe_id is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid bearer token")
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience is required")
        now = int(time.time())
        exp = now + int(self.jwt_ttl.total_seconds())
        claims = {"sub": spiffe_id, "aud": list(request.audience), "exp": exp, "iat": now}
        token = sign_jwt(self.signing_key, claims)
        return identity_pb2.MintJWTSVIDResponse(spiffe_id=spiffe_id, token=token, expires_at=exp)

    async def _bundles(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not self.serve_identity:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.bundle_calls += 1
        documents = {
            name: bundle_document(d, sequence=self.sequence, refresh_hint=self.refresh_hint)
            for name, d in self.domains.items()
        }
        return identity_pb2.FetchTrustBundlesResponse(
            trust_domain=self.trust_domain, bundles=documents
        )

    def _caller(self, authorization: str) -> str | None:
        token = authorization.removeprefix("Bearer ").strip()
        try:
            kid = jwt.get_unverified_header(token)["kid"]
            claims = jwt.decode(
                token, self._token_keys[kid].key, algorithms=["RS256"], audience="istio-ca"
            )
        except (jwt.PyJWTError, KeyError):
            return None
        _, _, namespace, account = claims["sub"].split(":")
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{account}"
