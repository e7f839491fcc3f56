"""An in-memory CA for policy tables: the worker's own servicer, no process, no port.

`TestCa.create(data_dir)` builds real material (a self-signed P-256 root), the
embedded token issuer's key and JWKS, and the servicer a worker runs, wired by
the same functions (`ca_server.assembly.certificate_service`, the authenticator
plan). Only what cannot exist without a gRPC server is faked: `FakeContext`
stands in for `grpc.aio.ServicerContext` (metadata, auth context, peer, abort).
The record is an in-memory list that can be told to fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry

from ca_server.assembly import certificate_service
from ca_server.authn.local_issuer import LocalIssuer
from ca_server.authority.material import CaMaterial, create_self_signed
from ca_server.config import CaConfig
from ca_server.errors import RecordWriteFailed
from ca_server.issuance.service import CertificateService, UndecodableRequest
from ca_server.kube.settings import own_cluster_id
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import IssuedCertificate
from certs.keys import generate_key
from certs.pem import to_pem
from certs.profile import leaf_certificate
from certs.spiffe_id import SpiffeId
from protos.istio.v1.auth import ca_pb2
from tests.support.broken import TokenForge

PEER = "ipv4:127.0.0.1:40000"


class Aborted(Exception):
    """What `FakeContext.abort` raises, as grpc's own `abort` raises to end the call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class FakeContext:
    """The parts of `grpc.aio.ServicerContext` the servicer reads, without a server."""

    metadata: Sequence[tuple[str, str]] = ()
    client_chain_pem: bytes | None = None  # leaf first: as grpc's auth context hands it
    peer_address: str = PEER

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.client_chain_pem is None:
            return {}
        return {"x509_pem_cert": [self.client_chain_pem]}

    def peer(self) -> str:
        return self.peer_address

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


@dataclass
class MemoryRecorder:
    """The issuance record as a list; `failing=True` makes every write fail."""

    entries: list[IssuedCertificate] = field(default_factory=list)
    failing: bool = False
    gate: asyncio.Event | None = None  # when set, a write waits for it (a slow database)

    async def record(self, entry: IssuedCertificate) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise RecordWriteFailed("the issuance record could not be written")
        self.entries.append(entry)


@dataclass
class TestCa:
    """A CA in memory: `call(...)` runs CreateCertificate as a worker would."""

    __test__ = False  # not a pytest test class

    config: CaConfig
    material: CaMaterial
    issuer: LocalIssuer
    forge: TokenForge
    recorder: MemoryRecorder
    registry: CollectorRegistry
    service: CertificateService

    @classmethod
    def create(cls, data_dir: Path, **config: Any) -> TestCa:
        """A CA whose config is `CaConfig(data_dir=data_dir, **config)` (workers=1)."""
        cfg = CaConfig(data_dir=data_dir, workers=1, **config)
        material = create_self_signed(cfg.trust_domain, datetime.now(UTC))
        issuer = LocalIssuer.load_or_create(data_dir)
        return cls.with_material(cfg, material, issuer)

    @classmethod
    def with_material(
        cls,
        config: CaConfig,
        material: CaMaterial,
        issuer: LocalIssuer,
        recorder: MemoryRecorder | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> TestCa:
        """Another CA sharing `material` and `issuer` (keys are slow to make), e.g. another
        policy; its signer reads `clock`."""
        registry = CollectorRegistry()
        recorder = recorder if recorder is not None else MemoryRecorder()
        service = certificate_service(
            config,
            lambda: material,
            recorder=recorder,
            metrics=CaMetrics(registry, own_cluster=own_cluster_id(config.kube)),
            events=CaEventLog(logging.getLogger("ca_server.events")),
            clock=clock,
        )
        return cls(
            config=config,
            material=material,
            issuer=issuer,
            forge=TokenForge(config.data_dir),
            recorder=recorder,
            registry=registry,
            service=service,
        )

    @property
    def root_pem(self) -> str:
        return to_pem(self.material.roots[0])

    def mint(self, namespace: str = "demo", service_account: str = "frontend") -> str:
        return self.issuer.mint(namespace=namespace, service_account=service_account)

    def client_chain(
        self,
        spiffe_id: str,
        *,
        ttl: timedelta = timedelta(hours=1),
        now: datetime | None = None,
        material: CaMaterial | None = None,
    ) -> bytes:
        """A client leaf for `spiffe_id` signed by this CA's root (or `material`), as PEM."""
        signing = material or self.material
        leaf = leaf_certificate(
            spiffe_id=SpiffeId.parse(spiffe_id),
            public_key=generate_key().public_key(),
            issuer_cert=signing.signing_cert,
            issuer_key=signing.signing_key,
            now=now or datetime.now(UTC),
            ttl=ttl,
        )
        return to_pem(leaf).encode()

    async def call(
        self,
        csr: bytes | str | UndecodableRequest,
        *,
        token: str | None = None,
        ttl_s: int = 3600,
        metadata_fields: dict[str, str] | None = None,
        client_chain_pem: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        peer: str = PEER,
    ) -> list[str]:
        """The chain CreateCertificate answers, or `Aborted` with its code and message."""
        md = [*headers]
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        context = FakeContext(metadata=md, client_chain_pem=client_chain_pem, peer_address=peer)
        request = (
            csr if isinstance(csr, UndecodableRequest) else _request(csr, ttl_s, metadata_fields)
        )
        response = await self.service.CreateCertificate(request, context)
        return list(response.cert_chain)

    def issue(self, csr: bytes | str, **kwargs: Any) -> list[str]:
        """`call` from synchronous code."""
        return asyncio.run(self.call(csr, **kwargs))

    def metric(self, name: str, **labels: str) -> float:
        """This CA's own registry's samples by their exported name (Istio's counters without
        `_total`, as /metrics shows them) with at least `labels` (others, such as `cluster`,
        may be there), summed; 0 for a label set not counted yet."""
        families = {family.name: family for family in self.registry.collect()}
        base = name.removesuffix("_total")
        if base not in families:
            raise KeyError(f"no series {name}; known: {', '.join(sorted(families))}")
        sample = f"{base}_total" if families[base].type == "counter" else name
        return sum(
            s.value
            for s in families[base].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )


def _request(
    csr: bytes | str, ttl_s: int, metadata_fields: dict[str, str] | None
) -> ca_pb2.IstioCertificateRequest:
    request = ca_pb2.IstioCertificateRequest(
        csr=csr.decode() if isinstance(csr, bytes) else csr, validity_duration=ttl_s
    )
    if metadata_fields:
        request.metadata.CopyFrom(struct_pb2.Struct())
        for key, value in metadata_fields.items():
            request.metadata.fields[key].string_value = value
    return request
