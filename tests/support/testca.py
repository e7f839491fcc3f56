"""An in-memory CA for policy tables: the worker's own servicer, no process, no port.

`TestCa.create(data_dir)` builds real material (a self-signed P-256 root), the
embedded token issuer's key and JWKS, and the servicers a worker runs
(CreateCertificate and BatchCreateCertificates), wired by the same functions
(`ca_server.assembly.certificate_service`, `batch_service`, the authenticator plan). Only what cannot exist without a gRPC server is faked: `FakeContext`
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

from ca_server.assembly import batch_service, certificate_service
from ca_server.authn.local_issuer import LocalIssuer
from ca_server.authn.plan import build_authentication
from ca_server.authority.material import CaMaterial, create_self_signed
from ca_server.config import CaConfig
from ca_server.errors import RecordWriteFailed
from ca_server.issuance.batch import BatchCertificateService
from ca_server.issuance.service import CertificateService, InFlight, UndecodableRequest
from ca_server.kube.settings import own_cluster_id
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import IssuedCertificate
from certs.keys import generate_key
from certs.pem import to_pem
from certs.profile import leaf_certificate
from certs.spiffe_id import SpiffeId
from protos.bulwark.v1 import identity_pb2
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

    def time_remaining(self) -> float | None:
        return None  # no deadline, as a client that set none

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


@dataclass
class MemoryRecorder:
    """The issuance record as a list; `failing=True` makes every write fail, `refuse(entry)`
    the writes of the entries it names (a constraint the database enforces, say)."""

    entries: list[IssuedCertificate] = field(default_factory=list)
    failing: bool = False
    gate: asyncio.Event | None = None  # when set, a write waits for it (a slow database)
    refuse: Callable[[IssuedCertificate], bool] | None = None
    batches: list[int] = field(default_factory=list)  # entries per `record_many` call

    async def record(self, entry: IssuedCertificate, *, within: float | None = None) -> None:
        (error,) = await self.record_many([entry], within=within)
        if error is not None:
            raise error

    async def record_many(
        self, entries: Sequence[IssuedCertificate], *, within: float | None = None
    ) -> list[RecordWriteFailed | None]:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append(len(entries))
        errors: list[RecordWriteFailed | None] = []
        for entry in entries:
            if self.failing or (self.refuse is not None and self.refuse(entry)):
                errors.append(RecordWriteFailed("the issuance record could not be written"))
            else:
                self.entries.append(entry)
                errors.append(None)
        return errors


@dataclass(frozen=True)
class Item:
    """One item of a BatchCreateCertificates call."""

    csr: bytes | str
    spiffe_id: str = ""
    ttl_s: int = 3600

    def params(self) -> identity_pb2.CertificateParams:
        csr = self.csr.decode() if isinstance(self.csr, bytes) else self.csr
        return identity_pb2.CertificateParams(
            csr=csr, spiffe_id=self.spiffe_id, validity_duration=self.ttl_s
        )


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
    batch: BatchCertificateService

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
        metrics = CaMetrics(registry, own_cluster=own_cluster_id(config.kube))
        events = CaEventLog(logging.getLogger("ca_server.events"))
        authentication = build_authentication(config, lambda: material)
        in_flight = InFlight(config.max_concurrent_rpcs)
        shared: dict[str, Any] = {
            "recorder": recorder,
            "metrics": metrics,
            "events": events,
            "authentication": authentication,
            "in_flight": in_flight,
        }
        return cls(
            config=config,
            material=material,
            issuer=issuer,
            forge=TokenForge(config.data_dir),
            recorder=recorder,
            registry=registry,
            service=certificate_service(config, lambda: material, clock=clock, **shared),
            batch=batch_service(config, lambda: material, clock=clock, **shared),
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

    async def batch_call(
        self,
        items: Sequence[Item] | UndecodableRequest,
        *,
        token: str | None = None,
        client_chain_pem: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        peer: str = PEER,
    ) -> list[identity_pb2.CertificateResult]:
        """BatchCreateCertificates' results, or `Aborted` when the whole call is refused."""
        md = [*headers]
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        context = FakeContext(metadata=md, client_chain_pem=client_chain_pem, peer_address=peer)
        request = (
            items
            if isinstance(items, UndecodableRequest)
            else identity_pb2.BatchCreateCertificatesRequest(params=[i.params() for i in items])
        )
        response = await self.batch.BatchCreateCertificates(request, context)
        return list(response.results)

    def issue_batch(
        self, items: Sequence[Item] | UndecodableRequest, **kwargs: Any
    ) -> list[identity_pb2.CertificateResult]:
        """`batch_call` from synchronous code."""
        return asyncio.run(self.batch_call(items, **kwargs))

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
