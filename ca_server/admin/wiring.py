"""Glue for the CA supervisor: open the record, read the admin token, build the router."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from ca_server.admin.routes import CaCertificates, build_admin_router
from ca_server.admin.ui import build_ui_router, refusal_counts
from ca_server.authn.plan import authenticator_plan
from ca_server.authority.custody import key_location
from ca_server.authority.material import CaMaterial
from ca_server.authority.slots.rotator import SlotRotator
from ca_server.config import CaConfig
from ca_server.errors import ConfigError
from ca_server.kube.status import ClusterStatus
from ca_server.record.ledger import (
    LedgerError,
    Pruner,
    RecordUrlError,
    default_record_url,
    open_reader,
    parse_record_url,
)
from ca_server.record.ledger.dialects import driver_errors
from ca_server.record.ledger.recorder import prepare
from certs.pem import sha256_fingerprint

log = logging.getLogger(__name__)
PRUNE_INTERVAL = timedelta(minutes=10)
PRUNE_BATCH = 1000


def is_loopback(host: str) -> bool:
    """True when `host` (an admin bind address) accepts connections from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_admin_token(path: Path | None) -> str | None:
    """The admin bearer token from `--admin-token-file`, or None when no file is configured."""
    if path is None:
        return None
    if path.stat().st_mode & 0o077:
        log.warning("admin token file %s is readable by others; chmod 600 it", path)
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"admin token file {path} is empty")
    return token


def ca_certificates_of(material: CaMaterial, key_storage: str = "file") -> CaCertificates:
    """The roots, the signing certificate plus chain when it is not itself a root, and where
    the signing key lives (`key_storage` names a non-HSM key's store)."""
    roots = tuple(material.roots)
    seen = {sha256_fingerprint(r) for r in roots}
    intermediates = []
    for cert in (material.signing_cert, *material.chain):
        if sha256_fingerprint(cert) not in seen:
            seen.add(sha256_fingerprint(cert))
            intermediates.append(cert)
    return CaCertificates(
        roots=roots,
        intermediates=tuple(intermediates),
        signing_key=key_location(material.signing_key, file_storage=key_storage),
    )


def key_storage_of(config: CaConfig) -> str:
    """Where a CA key that is not in an HSM lives: the `istio-ca-secret` of a self-signed CA
    on Kubernetes, else a file (the data dir or the plugged-in `cacerts` directory)."""
    return "kubernetes-secret" if config.kube is not None and config.cacerts_dir is None else "file"


def authenticator_names(config: CaConfig) -> list[str]:
    """The authenticators a CA with `config` runs, in the order it tries them (the workers'
    own plan, so the report cannot drift from what runs)."""
    return [planned.description for planned in authenticator_plan(config)]


def check_record(config: CaConfig) -> None:
    """Open the record (creating or migrating its schema) or raise a `ConfigError` saying why."""
    url = config.record or default_record_url(config.data_dir)
    try:
        parsed = parse_record_url(url)
    except RecordUrlError as exc:
        raise ConfigError(f"--record: {exc}") from exc
    errors: tuple[type[Exception], ...] = (LedgerError, *driver_errors(parsed))
    try:
        prepare(url)
    except errors as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open the issuance record {parsed.redacted()}: {reason}") from exc


def admin_router_for(
    config: CaConfig,
    material: Callable[[], CaMaterial],
    *,
    admin_host: str,
    spiffe_bundle: Callable[[], dict[str, Any]] | None = None,
    federated_bundles: Callable[[], dict[str, bytes]] = dict,
    metrics_dir: str | None = None,
    clusters: Callable[[], Sequence[ClusterStatus]] = list,
) -> tuple[APIRouter, Callable[[], None]]:
    """The supervisor's glue: open the record reader and pruner, build the /v1 router
    (`metrics_dir`: where the workers' metrics are, for the web view's refusal counts;
    `clusters`: the clusters a CA on Kubernetes serves, for /v1/ca and the web view).

    Returns the router and a function that closes the reader and stops the pruner.
    """
    url = config.record or default_record_url(config.data_dir)
    reader = open_reader(url)
    pruner: Pruner | None = None
    if config.record_retention is not None:
        pruner = Pruner(
            parse_record_url(url),
            max_age=config.record_retention,
            interval=PRUNE_INTERVAL,
            batch_size=PRUNE_BATCH,
            clock=lambda: datetime.now(UTC),
        ).start()
    loopback = is_loopback(admin_host)
    token = read_admin_token(config.admin_token_file)
    if token is None and not loopback:
        log.warning(
            "admin API on %s without --admin-token-file: record routes refuse all", admin_host
        )
    router = APIRouter()
    router.include_router(
        build_admin_router(
            reader=reader,
            ca_certificates=lambda: ca_certificates_of(material(), key_storage_of(config)),
            csr_policy=config.csr_san_policy,
            authenticators=authenticator_names(config),
            admin_token=token,
            loopback=loopback,
            spiffe_bundle=spiffe_bundle,
            federated_bundles=federated_bundles,
            clusters=clusters,
        )
    )
    router.include_router(  # the web view: same reader, material and token as /v1
        build_ui_router(
            reader=reader,
            ca_certificates=lambda: ca_certificates_of(material(), key_storage_of(config)),
            refusals=lambda: refusal_counts(metrics_dir),
            clusters=clusters,
            admin_token=token,
            loopback=loopback,
        )
    )

    def close() -> None:
        if pruner is not None:
            pruner.stop()
        reader.close()

    return router, close


def rotation_router_for(
    config: CaConfig,
    rotator: SlotRotator | None,
    *,
    admin_host: str,
    changed: Callable[[], None],
) -> APIRouter:
    """The /v1/ca/rotation routes (`ca_server.admin.rotation_routes`)."""
    from ca_server.admin.rotation_routes import build_rotation_router

    return build_rotation_router(
        rotator,
        admin_token=read_admin_token(config.admin_token_file),
        loopback=is_loopback(admin_host),
        changed=changed,
    )
