"""One JWT-SVID key set for every replica (issue 22.5): kept where all replicas read it (the
record's PostgreSQL database, or a Kubernetes Secret) and changed by one of them at a time.

    shared store ──load──▶ each replica's supervisor, every key-timeline tick
                 ◀──compare_and_set── the rotation owner, when `plan` changes the set
    supervisor ──KeyFile.save──▶ <data-dir>/jwt-svid/keys.json ──load──▶ its workers

The owner is the Lease holder with Kubernetes. Without leader election every replica may
write, and the store's compare-and-set (a version column, the Secret's resourceVersion) lets
exactly one write of each version win: the others read the winner's keys and find nothing
left to change. Any replica may write while no key signs at all (first start, or an owner
gone for a whole active life), so minting never waits for an election.

The first replica to find the store empty puts its own key set there (its key file), so the
tokens it signed before keep validating. `spiffe_sequence` lives in the shared set too, so
every replica serves the same number for the same bundle. A replica bumps it when its bundle
(roots and published keys) differs from the one the stored sequence was counted for *and*
its own view changed since it last looked: replicas whose roots differ for a while (a
plugged-in CA updated on one first) bump it once each, instead of bumping it back and forth.
A bump moves it to at least the current Unix time, so it never falls below a number a replica
counted on its own (before replicas shared their keys, or while the store was unreachable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from ca_server.spiffe.jwtsvid.keyset import (
    JwtKey,
    JwtKeyPolicy,
    KeySet,
    decode,
    encode,
    new_key,
    plan,
    signing_key,
)

log = logging.getLogger(__name__)
CAS_ATTEMPTS = 5
KeyMaker = Callable[[datetime, JwtKeyPolicy], JwtKey]


class KeySetStore(Protocol):
    """A small document all replicas share; a write names the version it replaces."""

    @property
    def location(self) -> str:
        """Where the document is kept, for messages (never its contents)."""
        ...

    def load(self) -> tuple[str, bytes | None]:
        """(version, document); the document is None while nothing was ever stored."""
        ...

    def compare_and_set(self, version: str, document: bytes) -> bool:
        """Store `document` if the stored version is still `version`; False if another
        writer came first."""
        ...


class KeyStoreError(Exception):
    """The shared key set could not be read or written; the message says where and why."""


class SharedKeySet:
    """The replicas' common key set: `sync` reads it, changes it when this replica may and
    must, and returns what every replica is to use now."""

    def __init__(
        self,
        store: KeySetStore,
        *,
        policy: JwtKeyPolicy,
        owns: Callable[[], bool],
        errors: tuple[type[Exception], ...],
    ) -> None:
        """`owns()`: whether this replica is the rotation owner now; `errors`: what the
        store raises when it is unreachable or refuses."""
        self._store = store
        self._policy = policy
        self._owns = owns
        self._errors = errors
        self._seen_digest: str | None = None  # this replica's bundle digest at its last sync

    @property
    def location(self) -> str:
        return self._store.location

    def sync(
        self,
        now: datetime,
        digest: Callable[[KeySet], str],
        *,
        own: KeySet,
        make: KeyMaker = new_key,
    ) -> KeySet:
        """The key set at `now`; `digest(keyset)` is this replica's bundle digest for it, `own`
        what its key file holds (stored when the store is empty), `make` makes a new key (in
        the HSM with `--jwt-keys-in-hsm`)."""
        for _ in range(CAS_ATTEMPTS):
            version, stored = self._load()
            current = stored if stored is not None else own
            wanted, view = self._next(current, now, digest, make)
            if stored is None:  # above any number a replica counted on its own
                sequence = max(wanted.sequence, current.sequence + 1, int(now.timestamp()))
                wanted = replace(wanted, sequence=sequence)
            unchanged = wanted == current and stored is not None
            if unchanged or not (self._owns() or signing_key(current.keys, now) is None):
                self._seen_digest = view
                return current
            if self._write(version, wanted):
                self._seen_digest = view
                log.info("JWT-SVID key set stored in %s for every replica", self.location)
                return wanted
        raise KeyStoreError(
            f"JWT-SVID keys in {self.location} changed under this replica {CAS_ATTEMPTS} times "
            "in a row; retrying at the next tick"
        )

    def _next(
        self, current: KeySet, now: datetime, digest: Callable[[KeySet], str], make: KeyMaker
    ) -> tuple[KeySet, str]:
        planned = replace(current, keys=plan(current.keys, now, self._policy, make))
        view = digest(planned)
        if view != current.bundle_digest and view != self._seen_digest:
            sequence = max(current.sequence + 1, int(now.timestamp()))
            planned = replace(planned, sequence=sequence, bundle_digest=view)
        return planned, view

    def _load(self) -> tuple[str, KeySet | None]:
        try:
            version, document = self._store.load()
        except self._errors as exc:
            raise KeyStoreError(f"cannot read the JWT-SVID keys in {self.location}: {exc}") from exc
        if document is None:
            return version, None
        try:
            return version, decode(document)
        except ValueError as exc:
            raise KeyStoreError(
                f"{self.location} holds no usable JWT-SVID key set ({exc}); restore it from a "
                "backup, or delete it to start a new one (tokens already issued stop validating)"
            ) from None

    def _write(self, version: str, keyset: KeySet) -> bool:
        try:
            return self._store.compare_and_set(version, encode(keyset))
        except self._errors as exc:
            raise KeyStoreError(
                f"cannot store the JWT-SVID keys in {self.location}: {exc}"
            ) from exc
