"""The supervisor's SPIFFE duties beside X.509 issuance: the JWT-SVID key timeline, the
bundle endpoint and federation (docs/JWT-SVID.md).

The supervisor alone writes the JWT key file (`rotate`, run at start and then on a tick
well inside a key's active life) and the federated bundles; workers only read both. With
replicas (a PostgreSQL record, or Kubernetes) the key set itself is shared
(`ca_server.spiffe.jwtsvid.shared`) and the key file mirrors it. `start()` binds the bundle
endpoint (a bind error is a start-up error), `run()` keeps everything current until cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ca_server.authority.custody import FILE_CUSTODY, HsmCustody, KeyCustody
from ca_server.authority.material import CaMaterial
from ca_server.config import CaConfig, parse_hostport
from ca_server.datadir import private_dir
from ca_server.spiffe.bundle import BundleSource, contents_digest
from ca_server.spiffe.endpoint import BundleEndpoint, ServingIdentity
from ca_server.spiffe.federation import FederationStore, Federator
from ca_server.spiffe.jwtsvid import custody as jwt_custody
from ca_server.spiffe.jwtsvid.keyset import (
    JwtKey,
    JwtKeyPolicy,
    KeyFile,
    KeySet,
    key_policy,
    new_key,
    plan,
)
from ca_server.spiffe.jwtsvid.shared import KeyStoreError, SharedKeySet

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def shared_key_set(config: CaConfig, *, owns: Callable[[], bool]) -> SharedKeySet | None:
    """Where replicas share their JWT keys: the Secret `bulwark-jwt-keys` with Kubernetes
    (`owns`: the Lease holder), else a PostgreSQL record's database (every replica may write,
    compare-and-set decides); None for a CA alone on its SQLite record (its key file)."""
    if config.kube is not None:
        from ca_server.kube.errors import KubeError
        from ca_server.kube.jwt_keys import JwtKeySecret
        from ca_server.kube.wiring import client_factory

        secret = JwtKeySecret(client_factory(config.kube)(), namespace=config.kube.namespace)
        return SharedKeySet(secret, policy=key_policy(config), owns=owns, errors=(KubeError,))
    if config.record is None:
        return None
    from ca_server.record.ledger import LedgerError, parse_record_url
    from ca_server.record.ledger.dialects import driver_errors
    from ca_server.record.ledger.keyset_table import RecordKeyTable

    url = parse_record_url(config.record)
    if url.dialect != "postgresql":
        return None
    return SharedKeySet(
        RecordKeyTable(url),
        policy=key_policy(config),
        owns=lambda: True,
        errors=(LedgerError, *driver_errors(url)),
    )


def _log_changes(before: KeySet, after: KeySet, now: datetime) -> list[JwtKey]:
    """Log the keys published and unpublished; return the unpublished ones."""
    kept = {k.kid for k in after.keys}
    for key in after.keys:
        if key.kid not in {k.kid for k in before.keys}:
            log.info(
                "JWT-SVID key %s published; signs from %s",
                key.kid,
                key.active_from.isoformat(timespec="seconds"),
            )
    dropped = [key for key in before.keys if key.kid not in kept]
    for key in dropped:
        if now >= key.published_until:
            log.info("JWT-SVID key %s unpublished: its last token expired", key.kid)
        else:  # this replica's own key, before it joined the replicas' shared set
            log.warning(
                "JWT-SVID key %s unpublished: the replicas share another key set; tokens it "
                "signed stop validating (they expire by %s)",
                key.kid,
                key.published_until.isoformat(timespec="seconds"),
            )
    return dropped


def rotation_tick(config: CaConfig) -> float:
    """Seconds between key-timeline checks: a tenth of a key's life, within [0.2 s, 30 s]."""
    tick = min(config.jwt_key_active_life / 10, config.material_check_interval)
    return min(30.0, max(0.2, tick.total_seconds()))


class SpiffeServices:
    def __init__(
        self,
        config: CaConfig,
        material: Callable[[], CaMaterial],
        clock: Clock = lambda: datetime.now(UTC),
        custody: KeyCustody = FILE_CUSTODY,
        shared: SharedKeySet | None = None,
    ) -> None:
        self._hsm = (
            custody
            if isinstance(custody, HsmCustody) and config.pkcs11 and config.pkcs11.jwt_keys
            else None
        )
        self._config = config
        self._material = material
        self._clock = clock
        self._shared = shared
        self._shared_problem: str | None = None  # why the shared set is unusable, once said
        self.key_file = KeyFile(config.jwt_key_dir)
        self.bundle = BundleSource(
            roots=lambda: material().roots,
            key_file=self.key_file,
            refresh_hint=key_policy(config).refresh_hint,
            clock=clock,
        )
        self.federation = FederationStore(config.federation_dir)
        self.federator = Federator(peers=config.federate_with, store=self.federation)
        self._identity: ServingIdentity | None = None
        self._server: asyncio.Server | None = None

    def prepare(self) -> None:
        """At start, before any worker: the key directory, a signing key, the initial bundles."""
        private_dir(self._config.jwt_key_dir, what="JWT-SVID key directory")
        private_dir(self._config.federation_dir, what="federation directory")
        self.rotate()
        self.federator.seed()

    def rotate(self) -> KeySet:
        """Apply the key timeline at now: drop expired keys, add active/prepared ones, and bump
        `spiffe_sequence` when the published bundle changes; with replicas, in the shared set,
        or in this replica's own while that cannot be used (said once, retried every tick).
        Writes the key file only on a change."""
        now = self._clock()
        before = self.key_file.load()
        make = jwt_custody.maker(self._hsm) if self._hsm is not None else new_key

        def digest(keyset: KeySet) -> str:
            return contents_digest(self._material().roots, keyset, now)

        after = self._from_shared(now, digest, before, make)
        if after is None:
            keys = plan(before.keys, now, key_policy(self._config), make)
            after = KeySet(keys=keys, sequence=before.sequence, bundle_digest=before.bundle_digest)
            after = after.with_bundle(digest(after))
        if after != before:
            self.key_file.save(after)
            dropped = _log_changes(before, after, now)
            if self._hsm is not None:  # a key already gone (another replica's turn) is no error
                for key in dropped:
                    jwt_custody.destroy(self._hsm, key)
        return after

    def _from_shared(
        self,
        now: datetime,
        digest: Callable[[KeySet], str],
        own: KeySet,
        make: Callable[[datetime, JwtKeyPolicy], JwtKey],
    ) -> KeySet | None:
        """The replicas' key set, or None (this replica keeps its own) while it is unusable."""
        if self._shared is None:
            return None
        try:
            shared = self._shared.sync(now, digest, own=own, make=make)
        except KeyStoreError as exc:
            if str(exc) != self._shared_problem:
                log.warning(
                    "%s; until it can, this replica keeps JWT-SVID keys of its own (a token it "
                    "mints validates only with its own bundle)",
                    exc,
                )
                self._shared_problem = str(exc)
            return None
        if self._shared_problem is not None:
            log.warning("JWT-SVID keys shared again through %s", self._shared.location)
            self._shared_problem = None
        return shared

    def federated(self) -> dict[str, bytes]:
        return self.federation.all()

    def spiffe_bundle(self) -> dict[str, Any]:
        return self.bundle.document()

    async def start(self) -> str | None:
        """Bind the bundle endpoint when configured; returns its bound address."""
        cfg = self._config
        if cfg.bundle_endpoint_addr is None:
            return None
        host, port = parse_hostport(cfg.bundle_endpoint_addr, what="--bundle-endpoint-addr")
        web = None
        if cfg.bundle_endpoint_cert is not None and cfg.bundle_endpoint_key is not None:
            web = (cfg.bundle_endpoint_cert, cfg.bundle_endpoint_key)
        self._identity = ServingIdentity(
            profile=cfg.bundle_endpoint_profile,
            work_dir=cfg.data_dir / "bundle-endpoint",
            trust_domain=cfg.trust_domain,
            material=self._material,
            web_files=web,
        )
        self._identity.refresh(self._clock())
        endpoint = BundleEndpoint(bundle=self.bundle.json_bytes, identity=self._identity)
        self._server = await endpoint.start(host, port)
        bound = self._server.sockets[0].getsockname()
        address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        log.info("SPIFFE bundle endpoint (%s) on https://%s", cfg.bundle_endpoint_profile, address)
        return address

    async def run(self) -> None:
        """Keep keys, the endpoint's certificate and federated bundles current; never returns."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_current())
                if self._config.federate_with:
                    group.create_task(self.federator.run())
        finally:
            if self._server is not None:
                self._server.close()

    async def _keep_current(self) -> None:
        tick = rotation_tick(self._config)
        while True:
            await asyncio.sleep(tick)
            try:
                await asyncio.to_thread(self.rotate)
                if self._identity is not None:
                    await asyncio.to_thread(self._identity.refresh, self._clock())
            except (OSError, ValueError, KeyStoreError) as exc:  # keep serving; retried next tick
                log.error("JWT key timeline or bundle endpoint certificate not updated: %s", exc)

    def exposition(self) -> str:
        return self.federator.exposition()
