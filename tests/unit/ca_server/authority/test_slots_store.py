"""Slot persistence (data dir) and the rotator the refresher drives, with an injected clock."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca_server.authority.material import (
    DirectoryKeyStore,
    load_cacerts_dir,
    load_or_create,
    write_root_bundle,
)
from ca_server.authority.refresh import MaterialManager
from ca_server.authority.slots.model import Authority, Slot, SlotError, SlotPolicy, SlotState
from ca_server.authority.slots.rotator import SlotRotator
from ca_server.authority.slots.store import (
    STATE_NAME,
    DirectorySlotStore,
    decode_state,
    encode_state,
)
from ca_server.errors import ConfigError
from certs.keys import generate_key
from certs.pem import load_certificates
from certs.profile import self_signed_root
from certs.spiffe_id import TrustDomain
from tests.support.openssl import make_cacerts

TD = TrustDomain("cluster.local")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = SlotPolicy(
    prepare_at=0.8, propagation_delay=timedelta(hours=1), max_ttl=timedelta(hours=24)
)


def _root(now: datetime = T0, life: timedelta = timedelta(days=100)) -> Authority:
    key = generate_key()
    cert = self_signed_root(key=key, trust_domain=TD, now=now, lifetime=life)
    return Authority(cert=cert, key=key, anchors=(cert,))


def test_state_round_trips_and_keys_are_private(tmp_path: Path) -> None:
    store = DirectorySlotStore(tmp_path / "ca")
    assert store.load_state() is None
    old, new = _root(), _root()
    s = SlotState(
        active=Slot(authority=old, since=T0),
        prepared=Slot(authority=new, since=T0 + timedelta(hours=1)),
    )
    store.save_state(s)
    assert store.load_state() == s
    keys = list((tmp_path / "ca").glob("authority-*-key.pem"))
    assert len(keys) == 2
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in [*keys, tmp_path / "ca/ca-key.pem"])
    classic = DirectoryKeyStore(tmp_path / "ca").load()
    assert classic is not None and classic.signing_cert == old.cert
    assert classic.roots == (old.cert, new.cert), "the classic bundle mirrors the slots"


def test_dropped_authority_loses_its_key_file(tmp_path: Path) -> None:
    store = DirectorySlotStore(tmp_path / "ca")
    old, new = _root(), _root()
    store.save_state(
        SlotState(
            active=Slot(authority=new, since=T0),
            retired=Slot(authority=old, since=T0, until=T0),
        )
    )
    store.save_state(SlotState(active=Slot(authority=new, since=T0)))
    assert len(list((tmp_path / "ca").glob("authority-*"))) == 4, "one authority's four files"
    assert old.id[:24] not in " ".join(p.name for p in (tmp_path / "ca").iterdir())


def test_a_crash_before_the_commit_leaves_the_old_state(tmp_path: Path) -> None:
    """Blobs of a new state written, slots.json not yet: a restart sees the old state whole."""
    store = DirectorySlotStore(tmp_path / "ca")
    first = SlotState(active=Slot(authority=_root(), since=T0))
    store.save_state(first)
    blobs, _record = encode_state(SlotState(active=Slot(authority=_root(), since=T0)))
    for name, data in blobs.items():
        (tmp_path / "ca" / name).write_bytes(data)
    assert store.load_state() == first


@pytest.mark.parametrize(
    ("case", "record", "message"),
    [
        ("not JSON", b"{", "unreadable"),
        ("unknown version", b'{"version": 9}', "unreadable"),
        ("no active CA", b'{"version": 1, "active": null}', "no active CA"),
        ("missing authority", b'{"version": 1, "active": {"id": "ab", "since": "2030-01-01T00:00:00+00:00"}}', "missing"),
    ],
)  # fmt: skip
def test_damaged_state_is_a_clear_config_error(case: str, record: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decode_state(record, {}, "the data dir")


def _manager(tmp_path: Path, rotator: SlotRotator, may_act: bool = True) -> MaterialManager:
    classic = DirectoryKeyStore(tmp_path / "ca")
    first = load_or_create(classic, TD, T0)
    return MaterialManager(
        initial=rotator.step(first, T0, may_act=may_act),
        reload=lambda now: classic.load() or first,
        store=classic,
        trust_domain=TD,
        rotator=rotator,
        may_act=lambda: may_act,
    )


def test_refresher_walks_prepare_activate_drop_and_a_restart_resumes(tmp_path: Path) -> None:
    rotator = SlotRotator(
        store=DirectorySlotStore(tmp_path / "ca"), policy=POLICY, trust_domain=TD, self_signed=True
    )
    manager = _manager(tmp_path, rotator)
    old = manager.current.signing_cert
    written = (tmp_path / "ca" / STATE_NAME).stat().st_mtime_ns
    assert manager.refresh(T0 + timedelta(days=365)) is False, "20% of a 10-year root used"
    assert (tmp_path / "ca" / STATE_NAME).stat().st_mtime_ns == written, "no change, no write"

    due = T0 + timedelta(days=int(3650 * 0.81))
    assert manager.refresh(due) is True
    prepared = manager.current
    assert prepared.signing_cert == old and len(prepared.roots) == 2
    new = prepared.roots[1]
    assert new.public_key() != old.public_key(), "a new key, not a renewal"

    # A restart mid-rotation comes back prepared, still signing with the old root.
    again = SlotRotator(
        store=DirectorySlotStore(tmp_path / "ca"), policy=POLICY, trust_domain=TD, self_signed=True
    )
    restarted = _manager(tmp_path, again)
    assert restarted.current.signing_cert == old and restarted.current.roots == prepared.roots

    assert manager.refresh(due + timedelta(minutes=59)) is False, "propagation delay not over"
    assert manager.refresh(due + timedelta(hours=1)) is True
    assert manager.current.signing_cert == new
    assert manager.current.roots == (new, old)
    assert manager.refresh(due + timedelta(hours=24)) is False, "old leaves may still be live"
    assert manager.refresh(due + timedelta(hours=25)) is True
    retired = manager.current  # a fresh read: refresh() replaced what mypy narrowed above
    assert retired.roots == (new,)


def test_followers_only_read_the_slots(tmp_path: Path) -> None:
    rotator = SlotRotator(
        store=DirectorySlotStore(tmp_path / "ca"), policy=POLICY, trust_domain=TD, self_signed=True
    )
    manager = _manager(tmp_path, rotator, may_act=False)
    assert manager.refresh(T0 + timedelta(days=3600)) is False
    assert not (tmp_path / "ca" / STATE_NAME).exists(), "a follower stores nothing"
    with pytest.raises(SlotError, match="not stored"):
        rotator.status(T0)


def test_a_new_plugged_in_set_is_prepared_never_activated_at_once(tmp_path: Path) -> None:
    cacerts = make_cacerts(tmp_path / "a")
    other = make_cacerts(tmp_path / "b")
    now = datetime.now(UTC)
    rotator = SlotRotator(
        store=DirectorySlotStore(tmp_path / "slots"),
        policy=POLICY,
        trust_domain=TD,
        self_signed=False,
    )
    first = rotator.step(load_cacerts_dir(cacerts, now), now, may_act=True)
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (cacerts / name).write_bytes((other / name).read_bytes())
    swapped = load_cacerts_dir(cacerts, now)
    served = rotator.step(swapped, now, may_act=True)
    assert served.signing_cert == first.signing_cert, "the new set does not sign yet"
    assert set(served.roots) == set(first.roots) | set(swapped.roots)
    with pytest.raises(SlotError, match="cacerts directory"):
        rotator.prepare(now)
    later = rotator.step(swapped, now + timedelta(hours=1), may_act=True)
    assert later.signing_cert == swapped.signing_cert and later.chain == swapped.chain
    assert (tmp_path / "slots" / STATE_NAME).exists()


class WatchedStore(DirectorySlotStore):
    """Notes, at every save, whether the published root file already held the new bundle."""

    def __init__(self, directory: Path, root_file: Path) -> None:
        super().__init__(directory)
        self.root_file = root_file
        self.saves: list[bool] = []

    def save_state(self, state: SlotState) -> None:
        published = (
            load_certificates(self.root_file.read_bytes()) if self.root_file.exists() else []
        )
        self.saves.append(tuple(published) == state.bundle())
        super().save_state(state)


def test_the_root_file_holds_a_new_bundle_before_the_state_says_so(tmp_path: Path) -> None:
    """Issue 22 item 12: whoever reads the stored slots (/v1/ca/rotation) never sees a bundle
    that root-cert.pem does not hold yet, for the refresher's steps and the operator's verbs."""
    root_file = tmp_path / "root-cert.pem"
    store = WatchedStore(tmp_path / "ca", root_file)
    rotator = SlotRotator(
        store=store,
        policy=POLICY,
        trust_domain=TD,
        self_signed=True,
        publish=lambda material: write_root_bundle(root_file, material),
    )
    manager = _manager(tmp_path, rotator)
    due = T0 + timedelta(days=int(3650 * 0.81))
    for when in (
        due,
        due + timedelta(hours=1),
        due + timedelta(hours=25),
    ):  # prepare, activate, drop
        assert manager.refresh(when) is True
    later = due + timedelta(days=30)
    rotator.prepare(later)
    rotator.activate(later, force=True)
    rotator.retire(later, force=True)
    assert len(store.saves) == 7 and all(store.saves), store.saves
    assert load_certificates(root_file.read_bytes()) == list(rotator_bundle(store))


def rotator_bundle(store: DirectorySlotStore) -> tuple[x509.Certificate, ...]:
    state = store.load_state()
    assert state is not None
    return state.bundle()
