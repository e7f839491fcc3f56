"""A real CA with an admin token on a non-loopback admin bind, with a few certificates issued."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest

from certs.csr import build_csr
from certs.keys import generate_key
from certs.pem import load_certificates, serial_hex
from certs.spiffe_id import SpiffeId
from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import RunningCa, start_ca

# (namespace, service account, ttl seconds): one soon past its life, one fresh, one long
WORKLOADS = (("shop", "cart", 900), ("shop", "web", 86400), ("bank", "ledger", 7 * 86400))


@dataclass
class ViewedCa:
    ca: RunningCa
    token: str
    base: str  # http://127.0.0.1:<admin port>
    serials: dict[str, str]  # SPIFFE ID -> serial of its current certificate
    jwt_svid: tuple[str, str]  # (SPIFFE ID, jti) of the one JWT-SVID minted


def issue(ca: RunningCa, namespace: str, sa: str, ttl_s: int) -> tuple[str, str]:
    spiffe_id = f"spiffe://cluster.local/ns/{namespace}/sa/{sa}"
    csr = build_csr(generate_key(), SpiffeId.parse(spiffe_id))
    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
        chain = create_certificate(chan, csr, token=ca.mint_token(namespace, sa), ttl_s=ttl_s)
    return spiffe_id, serial_hex(load_certificates(chain[0])[0])


def mint_jwt_svid(ca: RunningCa, namespace: str, sa: str) -> tuple[str, str]:
    """One JWT-SVID (recorded, kind jwt-svid): its SPIFFE ID and jti."""
    stub = identity_pb2_grpc.WorkloadIdentityServiceStub(channel(ca.grpc_addr, ca.root_cert_path))
    minted = stub.MintJWTSVID(
        identity_pb2.MintJWTSVIDRequest(audience=["spiffe://cluster.local/ns/shop/sa/api"]),
        metadata=[("authorization", f"Bearer {ca.mint_token(namespace, sa)}")],
        timeout=10,
    )
    return minted.spiffe_id, jwt.decode(minted.token, options={"verify_signature": False})["jti"]


def refuse_once(ca: RunningCa) -> None:
    """One call with a token the CA cannot verify: an `authentication` refusal."""
    csr = build_csr(generate_key(), SpiffeId.parse("spiffe://cluster.local/ns/x/sa/y"))
    with channel(ca.grpc_addr, ca.root_cert_path) as chan, pytest.raises(grpc.RpcError) as refused:
        create_certificate(chan, csr, token="not-a-jwt")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def viewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewedCa]:
    root = tmp_path_factory.mktemp("ui")
    token = secrets.token_urlsafe(24)
    token_file = root / "admin-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    # 0.0.0.0 is not loopback: the view and /v1 demand the token, as in a cluster.
    ca = start_ca(root / "ca", "--admin-addr", "0.0.0.0:0", "--admin-token-file", str(token_file))
    try:
        serials = dict(issue(ca, *w) for w in WORKLOADS)
        # shop/web renews: its newer certificate is the current one, two are active
        spiffe_id, serials[spiffe_id] = issue(ca, "shop", "web", 2 * 86400)
        jwt_svid = mint_jwt_svid(ca, "shop", "web")  # its own row, not shop/web's certificate
        refuse_once(ca)
        port = ca.admin_addr.rsplit(":", 1)[1]
        yield ViewedCa(ca, token, f"http://127.0.0.1:{port}", serials, jwt_svid)
    finally:
        ca.stop()


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    return tmp_path
