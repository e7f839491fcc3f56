"""Issue 22.5: replicas share one JWT-SVID key set, changed by one of them at a time.

`SharedKeySet` against an in-memory store with the stores' contract (a version that every
write names); the stores themselves run against PostgreSQL and the API server in the
integration and Kubernetes tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca_server.authority.material import create_self_signed
from ca_server.config import CaConfig
from ca_server.spiffe.jwtsvid.keyset import JwtKeyPolicy, KeySet, encode, signing_key
from ca_server.spiffe.jwtsvid.shared import KeyStoreError, SharedKeySet
from ca_server.spiffe.services import SpiffeServices
from certs.spiffe_id import TrustDomain

T0 = datetime(2026, 6, 1, tzinfo=UTC)
POLICY = JwtKeyPolicy(active_life=timedelta(hours=24), max_token_ttl=timedelta(hours=1))


class MemoryStore:
    """A document with a version, as the record's table and the Secret keep it."""

    location = "memory"

    def __init__(self) -> None:
        self.version = 0
        self.document: bytes | None = None
        self.writes = 0
        self.before_write: Callable[[], None] | None = None  # another replica's turn
        self.failure: Exception | None = None

    def load(self) -> tuple[str, bytes | None]:
        if self.failure is not None:
            raise self.failure
        return str(self.version), self.document

    def compare_and_set(self, version: str, document: bytes) -> bool:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        if version != str(self.version):
            return False
        self.version, self.document, self.writes = self.version + 1, document, self.writes + 1
        return True


def digest_of(roots: str) -> Callable[[KeySet], str]:
    return lambda keyset: roots + "|" + ",".join(sorted(k.kid for k in keyset.keys))


def replica(store: MemoryStore, *, owns: bool = True) -> SharedKeySet:
    return SharedKeySet(store, policy=POLICY, owns=lambda: owns, errors=(OSError,))


def test_replicas_starting_together_end_on_one_key_set() -> None:
    store = MemoryStore()
    a, b = replica(store), replica(store)
    first = a.sync(T0, digest_of("r"), own=KeySet())
    assert b.sync(T0, digest_of("r"), own=KeySet()) == first
    assert store.writes == 1 and signing_key(first.keys, T0) is not None
    assert first.sequence >= T0.timestamp()  # above any count a replica kept on its own


def test_the_first_replica_shares_its_own_keys_and_nobody_counts_backwards() -> None:
    """Upgrading replicas that kept keys of their own: the first to find the store empty puts
    its keys there (its tokens keep validating); no replica's spiffe_sequence goes down."""
    store = MemoryStore()
    a_own = replica(MemoryStore()).sync(T0, digest_of("r"), own=KeySet())
    b_own = replica(MemoryStore()).sync(T0, digest_of("r"), own=KeySet())
    a_own = replace(a_own, sequence=57)
    b_own = replace(b_own, sequence=80)
    later = T0 + timedelta(hours=1)
    shared = replica(store).sync(later, digest_of("r"), own=a_own)
    assert shared.keys == a_own.keys
    adopted = replica(store).sync(later, digest_of("r"), own=b_own)
    assert adopted == shared and adopted.sequence > b_own.sequence


def test_of_two_replicas_preparing_at_once_one_write_wins_and_both_adopt_it() -> None:
    store = MemoryStore()
    a, b = replica(store), replica(store)
    a.sync(T0, digest_of("r"), own=KeySet())
    half = T0 + timedelta(hours=12)
    won: list[KeySet] = []
    store.before_write = lambda: won.append(
        a.sync(half, digest_of("r"), own=KeySet())
    )  # A writes first
    from_b = b.sync(half, digest_of("r"), own=KeySet())
    assert from_b == won[0], "B took A's key set instead of writing its own"
    assert len(from_b.keys) == 2 and store.writes == 2  # one prepared key, not two


def test_only_the_owner_rotates_and_the_others_adopt_its_keys() -> None:
    store = MemoryStore()
    leader, follower = replica(store, owns=True), replica(store, owns=False)
    first = leader.sync(T0, digest_of("r"), own=KeySet())
    half = T0 + timedelta(hours=12)
    assert (
        follower.sync(half, digest_of("r"), own=KeySet()) == first
    )  # due, but not the follower's to do
    assert store.writes == 1
    second = leader.sync(half, digest_of("r"), own=KeySet())
    assert len(second.keys) == 2
    assert follower.sync(half, digest_of("r"), own=KeySet()) == second


def test_a_follower_starts_a_key_when_none_signs() -> None:
    """No election may leave every replica unable to mint: with nothing signing (first start,
    or the owner gone for a whole active life), any replica makes a key."""
    store = MemoryStore()
    follower = replica(store, owns=False)
    first = follower.sync(T0, digest_of("r"), own=KeySet())
    assert signing_key(first.keys, T0) is not None and store.writes == 1
    later = T0 + timedelta(days=3)
    again = follower.sync(later, digest_of("r"), own=KeySet())
    assert signing_key(again.keys, later) is not None and store.writes == 2


def test_replicas_whose_roots_differ_do_not_bump_the_sequence_back_and_forth() -> None:
    store = MemoryStore()
    a, b = replica(store), replica(store)
    for minute in range(10):
        now = T0 + timedelta(minutes=minute)
        a.sync(now, digest_of("roots-a"), own=KeySet())
        b.sync(now, digest_of("roots-b"), own=KeySet())
    assert store.writes <= 2, f"{store.writes} writes: the sequence flaps between the replicas"


def test_store_failures_and_a_bad_document_say_where_never_what() -> None:
    store = MemoryStore()
    store.failure = OSError("connection refused")
    with pytest.raises(KeyStoreError, match="cannot read the JWT-SVID keys in memory"):
        replica(store).sync(T0, digest_of("r"), own=KeySet())
    store.failure = None
    store.document = b'{"version": 1, "keys": [{"private_key_pem": "-----BEGIN PRIVATE KEY"}]}'
    with pytest.raises(KeyStoreError, match="memory holds no usable JWT-SVID key set") as err:
        replica(store).sync(T0, digest_of("r"), own=KeySet())
    assert "PRIVATE" not in str(err.value)


def _config(tmp_path: Path) -> CaConfig:
    (tmp_path / "data").mkdir(mode=0o700, parents=True)
    return CaConfig(data_dir=tmp_path / "data", workers=1)


def test_each_replica_mirrors_the_shared_set_into_its_key_file(tmp_path: Path) -> None:
    """Workers read the key file, as before; it now holds the keys every replica shares."""
    store = MemoryStore()
    material = create_self_signed(TrustDomain("cluster.local"), T0)
    services = [
        SpiffeServices(
            _config(tmp_path / name),
            lambda: material,
            clock=lambda: T0,
            shared=SharedKeySet(store, policy=POLICY, owns=lambda: True, errors=(OSError,)),
        )
        for name in ("a", "b")
    ]
    for one in services:
        one.prepare()
    a, b = (s.key_file.load() for s in services)
    assert a == b and store.document == encode(a)
    assert services[0].spiffe_bundle() == services[1].spiffe_bundle()


def test_a_replica_that_cannot_use_the_shared_set_keeps_its_own_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Role that predates the shared Secret (403), or a store down: the CA still starts and
    mints with keys of its own, warns once, and joins the shared set once it can."""
    store = MemoryStore()
    store.failure = OSError("403 Forbidden")
    material = create_self_signed(TrustDomain("cluster.local"), T0)
    now = [T0]
    services = SpiffeServices(
        _config(tmp_path),
        lambda: material,
        clock=lambda: now[0],
        shared=SharedKeySet(store, policy=POLICY, owns=lambda: True, errors=(OSError,)),
    )
    services.prepare()
    own = services.key_file.load()
    assert signing_key(own.keys, T0) is not None and store.document is None
    now[0] = T0 + timedelta(minutes=1)
    services.rotate()
    assert caplog.text.count("403 Forbidden") == 1, caplog.text
    store.failure = None
    now[0] = T0 + timedelta(minutes=2)
    joined = services.rotate()
    assert store.document == encode(joined) and joined.keys == own.keys
    assert "JWT-SVID keys shared again" in caplog.text
