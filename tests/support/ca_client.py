"""A minimal synchronous client of IstioCertificateService (and BatchCreateCertificates) for tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.protobuf import struct_pb2

from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

SERVER_NAME = "istiod.istio-system.svc"


def channel(
    addr: str,
    root_pem: bytes | Path,
    *,
    client_key: bytes | None = None,
    client_chain: bytes | None = None,
    server_name: str = SERVER_NAME,
) -> grpc.Channel:
    root = root_pem.read_bytes() if isinstance(root_pem, Path) else root_pem
    creds = grpc.ssl_channel_credentials(
        root, private_key=client_key, certificate_chain=client_chain
    )
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", server_name)]
    )


def create_certificate(
    chan: grpc.Channel,
    csr_pem: str | bytes,
    *,
    token: str | None = None,
    ttl_s: int = 3600,
    cluster_id: str = "",
    metadata_fields: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> list[str]:
    stub = ca_pb2_grpc.IstioCertificateServiceStub(chan)
    md: list[tuple[str, str]] = []
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if cluster_id:
        md.append(("clusterid", cluster_id))
    request = ca_pb2.IstioCertificateRequest(
        csr=csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem, validity_duration=ttl_s
    )
    if metadata_fields:
        request.metadata.CopyFrom(struct_pb2.Struct())
        for key, value in metadata_fields.items():
            request.metadata.fields[key].string_value = value
    response = stub.CreateCertificate(request, metadata=md, timeout=timeout)
    return list(response.cert_chain)


def mint_jwt_svid(
    chan: grpc.Channel, *, token: str, audiences: list[str], ttl_s: int = 0, timeout: float = 10.0
) -> str:
    """A JWT-SVID from bulwark.v1.WorkloadIdentityService/MintJWTSVID."""
    stub = identity_pb2_grpc.WorkloadIdentityServiceStub(chan)
    response = stub.MintJWTSVID(
        identity_pb2.MintJWTSVIDRequest(audience=audiences, ttl_seconds=ttl_s),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=timeout,
    )
    return str(response.token)


def fetch_trust_bundle(
    chan: grpc.Channel, *, token: str, trust_domain: str = "cluster.local", timeout: float = 10.0
) -> dict[str, Any]:
    """The CA's own SPIFFE bundle (JSON) from FetchTrustBundles."""
    stub = identity_pb2_grpc.WorkloadIdentityServiceStub(chan)
    response = stub.FetchTrustBundles(
        identity_pb2.FetchTrustBundlesRequest(),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=timeout,
    )
    doc: dict[str, Any] = json.loads(response.bundles[trust_domain])
    return doc


def validate_jwt_svid(svid: str, bundle: dict[str, Any], audience: str) -> dict[str, Any]:
    """The claims of `svid`, checked with the bundle's JWT key of its `kid` (PyJWT)."""
    kid = jwt.get_unverified_header(svid)["kid"]
    keys = [k for k in bundle["keys"] if k.get("use") == "jwt-svid" and k.get("kid") == kid]
    if not keys:
        raise jwt.InvalidKeyError(f"kid {kid} is not in the bundle")
    key = jwt.PyJWK.from_dict(keys[0], algorithm="ES256").key
    claims: dict[str, Any] = jwt.decode(svid, key, algorithms=["ES256"], audience=audience)
    return claims


def batch_create(
    chan: grpc.Channel,
    items: Sequence[tuple[str | bytes, str, int]],
    *,
    token: str | None = None,
    cluster_id: str = "",
    timeout: float = 20.0,
) -> list[identity_pb2.CertificateResult]:
    """BatchCreateCertificates with `items` of (csr, spiffe_id, ttl_s); raises grpc.RpcError
    when the whole call is refused."""
    stub = identity_pb2_grpc.CertificateServiceStub(chan)
    md: list[tuple[str, str]] = []
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if cluster_id:
        md.append(("clusterid", cluster_id))
    request = identity_pb2.BatchCreateCertificatesRequest(
        params=[
            identity_pb2.CertificateParams(
                csr=csr.decode() if isinstance(csr, bytes) else csr,
                spiffe_id=spiffe_id,
                validity_duration=ttl_s,
            )
            for csr, spiffe_id, ttl_s in items
        ]
    )
    response = stub.BatchCreateCertificates(request, metadata=md, timeout=timeout)
    return list(response.results)
