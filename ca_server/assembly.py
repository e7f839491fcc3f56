"""What a CA worker serves, built from a `CaConfig` and a source of the current CA material.

One place wires the request pipeline: the authenticators the config plans
(`ca_server.authn.plan`), the impersonation rules, the signer and its policy, the issuance
record, and the servicers on a worker's ports (IstioCertificateService,
bulwark.v1.CertificateService for batches and bulwark.v1.WorkloadIdentityService, sharing one
`Authentication` and one limit of certificates in flight). The worker process (`ca_server.process.worker`) and the
in-process test CA (`tests/support/testca.py`) both build their servicers here, so a
policy table tests exactly what a worker runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc

from ca_server.authn.authenticators import Authentication
from ca_server.authn.impersonation import ImpersonationRules
from ca_server.authn.plan import build_authentication
from ca_server.authority.material import CaMaterial
from ca_server.config import CaConfig
from ca_server.issuance.batch import BatchCertificateService
from ca_server.issuance.batch import add_to_server as add_batch_service
from ca_server.issuance.service import CertificateService, InFlight
from ca_server.issuance.service import add_to_server as add_certificate_service
from ca_server.issuance.signer import Signer, SigningPolicy
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import Recorder
from ca_server.record.ledger.async_recorder import AsyncRecorder
from ca_server.spiffe.bundle import BundleSource
from ca_server.spiffe.federation.store import FederationStore
from ca_server.spiffe.jwtsvid.keyset import KeyFile, KeyResolver, key_policy, resolve_pem
from ca_server.spiffe.jwtsvid.service import WorkloadIdentityService
from ca_server.spiffe.jwtsvid.service import add_to_server as add_identity_service

Material = Callable[[], CaMaterial]


def open_recorder(config: CaConfig, metrics: CaMetrics | None = None) -> AsyncRecorder:
    """The issuance record for this process (SQLite in the data dir unless --record)."""
    import ca_server.record.ledger as ledger

    url = config.record or f"sqlite:///{(config.data_dir / 'record.db').resolve()}"
    options = ledger.RecorderOptions(max_batch=config.record_max_batch)
    managed = ledger.open_recorder(url, options=options)
    return AsyncRecorder(
        managed,
        linger_s=config.record_linger.total_seconds(),
        on_commit=metrics.record_commit_duration.observe if metrics is not None else None,
    )


def signer_for(
    config: CaConfig,
    material: Callable[[], CaMaterial | None],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Signer:
    """The signer a worker with `config` runs, signing with whatever `material()` is current
    at `clock()` (the system's; tests give another)."""
    return Signer(
        material=material,
        policy=SigningPolicy(
            csr_san_policy=config.csr_san_policy,
            default_ttl=config.default_ttl,
            max_ttl=config.max_ttl,
            allow_ed25519=config.allow_ed25519,
        ),
        clock=clock,
    )


def impersonation_rules(config: CaConfig, authentication: Authentication) -> ImpersonationRules:
    """The one impersonation rule of CreateCertificate and BatchCreateCertificates."""
    return ImpersonationRules(
        trust_domain=config.trust_domain,
        trusted_node_accounts=config.trusted_node_accounts,
        node_policy=config.node_identity_policy,
        node_binding=authentication,
    )


def certificate_service(
    config: CaConfig,
    material: Material,
    *,
    recorder: Recorder | None,
    metrics: CaMetrics,
    events: CaEventLog,
    authentication: Authentication | None = None,
    in_flight: InFlight | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CertificateService:
    """IstioCertificateService: the planned authenticators, the signer, the record."""
    authentication = authentication or build_authentication(config, material)
    metrics.label_clusters(authentication.known_clusters)
    return CertificateService(
        authentication=authentication,
        impersonation=impersonation_rules(config, authentication),
        signer=signer_for(config, material, clock),
        recorder=recorder,
        metrics=metrics,
        events=events,
        # The service enforces the limit itself, so an overload refusal is logged and counted.
        in_flight=in_flight or InFlight(config.max_concurrent_rpcs),
    )


def batch_service(
    config: CaConfig,
    material: Material,
    *,
    recorder: Recorder | None,
    metrics: CaMetrics,
    events: CaEventLog,
    authentication: Authentication | None = None,
    in_flight: InFlight | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BatchCertificateService:
    """bulwark.v1.CertificateService: BatchCreateCertificates with CreateCertificate's rules."""
    authentication = authentication or build_authentication(config, material)
    metrics.label_clusters(authentication.known_clusters)
    return BatchCertificateService(
        authentication=authentication,
        impersonation=impersonation_rules(config, authentication),
        signer=signer_for(config, material, clock),
        recorder=recorder,
        metrics=metrics,
        events=events,
        max_items=config.batch_max_certificates,
        in_flight=in_flight or InFlight(config.max_concurrent_rpcs),
    )


def identity_service(
    config: CaConfig,
    material: Material,
    *,
    authentication: Authentication,
    recorder: Recorder | None,
    metrics: CaMetrics,
    events: CaEventLog,
    resolve: KeyResolver = resolve_pem,
) -> WorkloadIdentityService:
    """JWT-SVIDs and trust bundles, from the shared key file and the federation store;
    `resolve` turns a key-file entry into its signing key (PEM, or a key in the HSM)."""
    key_file = KeyFile(config.jwt_key_dir)
    own = BundleSource(
        roots=lambda: material().roots,
        key_file=key_file,
        refresh_hint=key_policy(config).refresh_hint,
    )
    federated = FederationStore(config.federation_dir)

    def bundles() -> dict[str, bytes]:
        return {**federated.all(), str(config.trust_domain): own.json_bytes()}

    return WorkloadIdentityService(
        authentication=authentication,
        key_file=key_file,
        bundles=bundles,
        trust_domain=str(config.trust_domain),
        recorder=recorder,
        metrics=metrics,
        events=events,
        default_ttl=config.jwt_svid_default_ttl,
        max_ttl=config.jwt_svid_max_ttl,
        resolve=resolve,
    )


def add_services(
    server: grpc.aio.Server,
    config: CaConfig,
    material: Material,
    *,
    recorder: Recorder | None,
    metrics: CaMetrics,
    events: CaEventLog,
    resolve: KeyResolver = resolve_pem,
) -> Authentication:
    """Register the worker's servicers on `server`, with one `Authentication` (returned: the
    worker loads its keys before serving) and one limit of certificates in flight."""
    authentication = build_authentication(config, material)
    in_flight = InFlight(config.max_concurrent_rpcs)
    certificates = certificate_service(
        config,
        material,
        recorder=recorder,
        metrics=metrics,
        events=events,
        authentication=authentication,
        in_flight=in_flight,
    )
    add_certificate_service(certificates, server)
    batches = batch_service(
        config,
        material,
        recorder=recorder,
        metrics=metrics,
        events=events,
        authentication=authentication,
        in_flight=in_flight,
    )
    add_batch_service(batches, server)
    identities = identity_service(
        config,
        material,
        authentication=authentication,
        recorder=recorder,
        metrics=metrics,
        events=events,
        resolve=resolve,
    )
    add_identity_service(identities, server)
    return authentication
