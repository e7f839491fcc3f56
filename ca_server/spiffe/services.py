"""The supervisor's SPIFFE duties beside X.509 issuance: the JWT-SVID key timeline, the
bundle endpoint and federation (docs/JWT-SVID.md).

The supervisor alone writes the JWT key file (`rotate`, run at start and then on a tick
well inside a key's active life) and the federated bundles; workers only read both.
`start()` binds the bundle endpoint (a bind error is a start-up error), `run()` keeps
everything current until cancelled.
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
from ca_server.spiffe.jwtsvid.keyset import KeyFile, KeySet, key_policy, new_key, plan

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


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
    ) -> None:
        self._hsm = (
            custody
            if isinstance(custody, HsmCustody) and config.pkcs11 and config.pkcs11.jwt_keys
            else None
        )
        self._config = config
        self._material = material
        self._clock = clock
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
        `spiffe_sequence` when the published bundle changes. Writes only on a change."""
        now = self._clock()
        before = self.key_file.load()
        make = jwt_custody.maker(self._hsm) if self._hsm is not None else new_key
        keys = plan(before.keys, now, key_policy(self._config), make)
        after = KeySet(keys=keys, sequence=before.sequence, bundle_digest=before.bundle_digest)
        after = after.with_bundle(contents_digest(self._material().roots, after, now))
        if after != before:
            self.key_file.save(after)
            added = {k.kid for k in keys} - {k.kid for k in before.keys}
            dropped = {k.kid for k in before.keys} - {k.kid for k in keys}
            for key in keys:
                if key.kid in added:
                    log.info(
                        "JWT-SVID key %s published; signs from %s",
                        key.kid,
                        key.active_from.isoformat(timespec="seconds"),
                    )
            for kid in sorted(dropped):
                log.info("JWT-SVID key %s unpublished: its last token expired", kid)
            if self._hsm is not None:
                for key in before.keys:
                    if key.kid in dropped:
                        jwt_custody.destroy(self._hsm, key)
        return after

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
            except (OSError, ValueError) as exc:  # keep serving what we have; retried next tick
                log.error("JWT key timeline or bundle endpoint certificate not updated: %s", exc)

    def exposition(self) -> str:
        return self.federator.exposition()
