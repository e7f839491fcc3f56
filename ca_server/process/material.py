"""The supervisor's CA material duties: the material at start (plugged-in files, the Kubernetes
Secret or the data dir's self-signed root), where it is re-read from, the keys each worker is
handed, and the refresher that keeps root-cert.pem and the workers current."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ca_server.authority.custody import FILE_CUSTODY, KeyCustody
from ca_server.authority.material import (
    CaMaterial,
    DirectoryKeyStore,
    KeyStore,
    load_cacerts_dir,
    load_or_create,
    write_root_bundle,
)
from ca_server.authority.refresh import MaterialManager, ReloadHealth, describe_failure, fingerprint
from ca_server.authority.slots.rotator import SlotRotator
from ca_server.config import CaConfig
from ca_server.errors import ConfigError
from ca_server.process.pool import WorkerPool
from ca_server.process.worker import MaterialPems, WorkerKeys, WorkerSpec

SERVING_CERT_TTL = timedelta(days=365)
CaPool = WorkerPool[WorkerSpec, WorkerKeys]  # workers running `run_worker`


def prepare_material(
    config: CaConfig,
    now: datetime,
    rotator: SlotRotator | None = None,
    custody: KeyCustody = FILE_CUSTODY,
) -> CaMaterial:
    """Plugged-in CA files when given, else the self-signed root of the data dir (created once).

    With CA slots (`rotator`) the stored slots win: a restart mid-rotation keeps signing with
    the active CA even when the `cacerts` files already hold the next one."""
    if config.cacerts_dir is not None:
        material = load_cacerts_dir(config.cacerts_dir, now, custody)
    elif config.kube is not None:
        from ca_server.kube.wiring import load_or_create_material

        material = load_or_create_material(config.kube, config.trust_domain, now, custody)
    else:
        material = load_or_create(
            DirectoryKeyStore(config.data_dir / "ca", custody), config.trust_domain, now, custody
        )
    if rotator is not None:
        material = rotator.step(material, now, may_act=config.kube is None)
    write_root_bundle(config.root_cert_path, material)
    return material


def serving_certificate(
    config: CaConfig, material: CaMaterial, now: datetime
) -> tuple[bytes, bytes]:
    """A TLS certificate for port 15012 issued by the CA itself: (chain PEM, key PEM)."""
    issued = material.issue_server_certificate(
        now=now, ttl=SERVING_CERT_TTL, dns_names=config.server_dns_names
    )
    return issued.chain_pem, issued.key_pem


def material_manager(
    config: CaConfig,
    initial: CaMaterial,
    may_act: Callable[[], bool] = lambda: True,
    rotator: SlotRotator | None = None,
    custody: KeyCustody = FILE_CUSTODY,
) -> MaterialManager:
    """Where material is re-read from, and whether this process may renew the root or move
    the CA slots."""
    store: KeyStore | None = None
    if config.cacerts_dir is not None:
        cacerts = config.cacerts_dir

        def reload(now: datetime) -> CaMaterial:
            return load_cacerts_dir(cacerts, now, custody)

    else:
        if config.kube is not None:
            from ca_server.kube.wiring import key_store

            store = key_store(config.kube, custody)
        else:
            store = DirectoryKeyStore(config.data_dir / "ca", custody)
        kept, in_kube = store, config.kube is not None

        def reload(now: datetime) -> CaMaterial:
            stored = kept.load()
            if stored is not None:
                return stored
            if in_kube:
                return initial
            # Not the initial material: after a renewal that would roll the root back.
            raise ConfigError(
                f"the CA key and root in {config.data_dir / 'ca'} are gone (still signing with "
                "the copy in memory); restore them from a backup: a restart would make a new root"
            )

    return MaterialManager(
        initial=initial,
        reload=reload,
        store=store,
        trust_domain=config.trust_domain,
        may_act=may_act,
        rotator=rotator,
        publish=lambda material: write_root_bundle(config.root_cert_path, material),
    )


def worker_keys(config: CaConfig, material: CaMaterial) -> WorkerKeys:
    serving_chain, serving_key = serving_certificate(config, material, datetime.now(UTC))
    return WorkerKeys(
        material=MaterialPems.of(material),
        serving_chain_pem=serving_chain,
        serving_key_pem=serving_key,
    )


async def keep_material_current(
    config: CaConfig,
    manager: MaterialManager,
    pool: CaPool,
    health: ReloadHealth,
    wake: asyncio.Event,
) -> None:
    """Every interval (or at once when `wake` is set, after an operator's rotation verb):
    re-read the material, (re)write root-cert.pem, update the workers.

    No error stops this loop: the CA keeps serving what it has, and each failure is counted
    and logged (once per distinct error) until a later check succeeds.
    """
    interval = config.material_check_interval.total_seconds()
    published = fingerprint(manager.current)  # what the workers sign with
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)
        wake.clear()
        try:
            await asyncio.to_thread(manager.refresh, datetime.now(UTC))
            current = manager.current
            await asyncio.to_thread(write_root_bundle, config.root_cert_path, current)
            if fingerprint(current) != published:
                await pool.update(worker_keys(config, current))
                published = fingerprint(current)
        except Exception as exc:  # the refresher outlives every error: logged, counted, retried
            health.failed(describe_failure(exc))
        else:
            health.succeeded(time.time())
