"""Orders for `agent.upstream.batch_client.BatchIssuer` and a TLS channel to a CA, shared by
the agent's integration test (Bulwark) and the interop test (Istio's own CA)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
from grpc import aio

from agent.upstream.batch_client import CertificateOrder
from certs.csr import build_csr
from certs.keys import generate_key
from certs.spiffe_id import SpiffeId
from tests.support.broken import csr_pem
from tests.support.ca_client import SERVER_NAME

TTL = timedelta(hours=1)


def workload(namespace: str, account: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{account}"


def order(spiffe_id: str, *, csr_for: str = "", ttl: timedelta = TTL) -> CertificateOrder:
    """An order whose CSR names `csr_for` (default: the identity ordered, or none when the
    order is for the caller's own identity)."""
    named = csr_for or spiffe_id
    key = generate_key()
    csr = build_csr(key, SpiffeId.parse(named)) if named else csr_pem(key)
    return CertificateOrder(spiffe_id=spiffe_id, csr_pem=csr, ttl=ttl)


def bad_csr_order(spiffe_id: str) -> CertificateOrder:
    return CertificateOrder(spiffe_id=spiffe_id, csr_pem=b"not a CSR", ttl=TTL)


def tls_channel(addr: str, root: Path) -> aio.Channel:
    return aio.secure_channel(
        addr,
        grpc.ssl_channel_credentials(root.read_bytes()),
        options=[("grpc.ssl_target_name_override", SERVER_NAME)],
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
