"""The JWT-SVID key timeline, decided with an injected clock: a key is published before it
signs, the newest active key signs, a retired key stays published until its last token
expired, and `spiffe_sequence` moves only when the published bundle changes."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca_server.authority.material import create_self_signed
from ca_server.config import CaConfig
from ca_server.spiffe.jwtsvid.keyset import (
    JwtKeyPolicy,
    KeyFile,
    KeySet,
    decode,
    plan,
    published,
    signing_key,
)
from ca_server.spiffe.services import SpiffeServices
from certs.spiffe_id import TrustDomain

T0 = datetime(2026, 6, 1, tzinfo=UTC)
POLICY = JwtKeyPolicy(active_life=timedelta(hours=24), max_token_ttl=timedelta(hours=1))


def test_first_plan_makes_one_key_that_signs_at_once() -> None:
    keys = plan((), T0, POLICY)
    assert len(keys) == 1 and signing_key(keys, T0) == keys[0]
    assert keys[0].published_until == T0 + timedelta(hours=25)


def test_next_key_is_published_half_a_life_before_it_signs() -> None:
    first = plan((), T0, POLICY)
    assert plan(first, T0 + timedelta(hours=11), POLICY) == first  # nothing to do yet
    keys = plan(first, T0 + timedelta(hours=12), POLICY)
    assert len(keys) == 2
    nxt = keys[1]
    assert nxt.state(T0 + timedelta(hours=12)) == "prepared"
    assert nxt.active_from == first[0].active_until
    assert signing_key(keys, T0 + timedelta(hours=23, minutes=59)) == first[0]
    assert signing_key(keys, T0 + timedelta(hours=24)) == nxt
    assert plan(keys, T0 + timedelta(hours=13), POLICY) == keys  # no third key early


def test_retired_key_stays_published_until_its_last_token_expired() -> None:
    keys = plan(plan((), T0, POLICY), T0 + timedelta(hours=12), POLICY)
    old = keys[0]
    at = T0 + timedelta(hours=24, minutes=59)
    assert old.state(at) == "retired" and old in published(keys, at)
    later = plan(keys, T0 + timedelta(hours=25), POLICY)
    assert old not in later and signing_key(later, T0 + timedelta(hours=25)) == keys[1]


def test_a_ca_down_past_every_key_starts_a_new_one() -> None:
    keys = plan((), T0, POLICY)
    after = plan(keys, T0 + timedelta(days=3), POLICY)
    assert len(after) == 1 and signing_key(after, T0 + timedelta(days=3)) is not None


def test_refresh_hint_is_well_inside_the_prepare_lead() -> None:
    short = JwtKeyPolicy(active_life=timedelta(seconds=8), max_token_ttl=timedelta(seconds=4))
    assert short.refresh_hint == timedelta(seconds=2) < short.active_life / 2
    assert POLICY.refresh_hint == timedelta(minutes=5)


def test_key_file_is_private_and_malformed_files_do_not_leak_keys(tmp_path: Path) -> None:
    kf = KeyFile(tmp_path)
    keys = plan((), T0, POLICY)
    kf.save(KeySet(keys=keys, sequence=1, bundle_digest="x"))
    assert stat.S_IMODE(kf.path.stat().st_mode) == 0o600
    assert kf.load().keys == keys
    doc = json.loads(kf.path.read_text())
    del doc["keys"][0]["kid"]
    with pytest.raises(ValueError) as err:
        decode(json.dumps(doc).encode())
    assert "PRIVATE" not in str(err.value)


def test_supervisor_rotation_bumps_the_sequence_only_on_a_change(tmp_path: Path) -> None:
    now = [T0]
    (tmp_path / "data").mkdir(mode=0o700)
    config = CaConfig(
        data_dir=tmp_path / "data",
        workers=1,
        jwt_key_active_life=timedelta(hours=24),
        jwt_svid_max_ttl=timedelta(hours=1),
    )
    material = create_self_signed(TrustDomain("cluster.local"), T0)
    services = SpiffeServices(config, lambda: material, clock=lambda: now[0])
    services.prepare()
    assert stat.S_IMODE(config.jwt_key_dir.stat().st_mode) == 0o700
    first = services.key_file.load()
    assert first.sequence == 1
    now[0] = T0 + timedelta(hours=1)
    assert services.rotate() == first  # nothing changed: same sequence, no write
    now[0] = T0 + timedelta(hours=12)
    second = services.rotate()
    assert second.sequence == 2 and len(second.keys) == 2
    doc = services.spiffe_bundle()
    assert doc["spiffe_sequence"] == 2
    assert {k["kid"] for k in doc["keys"] if k["use"] == "jwt-svid"} == {k.kid for k in second.keys}
    now[0] = T0 + timedelta(hours=24)
    assert services.rotate().sequence == 2  # the switch publishes nothing new
    now[0] = T0 + timedelta(hours=25)
    assert services.rotate().sequence == 3  # the retired key left the bundle
