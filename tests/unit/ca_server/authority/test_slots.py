"""CA slots (prepared/active/retired): the pure deciders and verbs as tables, with an
injected clock, plus a walk of a whole rotation that checks what verifies at every step."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ca_server.authority.slots.model import (
    Authority,
    Slot,
    SlotError,
    SlotPolicy,
    SlotState,
    activate,
    describe,
    prepare,
    retire,
    should_activate_next,
    should_drop_retired,
    should_prepare_next,
)
from certs.errors import CertsError
from certs.keys import generate_key
from certs.profile import LEAF_BACKDATE, leaf_certificate, self_signed_root
from certs.spiffe_id import SpiffeId, TrustDomain
from certs.verify import verify_svid

TD = TrustDomain("cluster.local")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LIFE = timedelta(days=100)
DELAY = timedelta(hours=1)
MAX_TTL = timedelta(hours=24)
POLICY = SlotPolicy(prepare_at=0.8, propagation_delay=DELAY, max_ttl=MAX_TTL)
ME = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/web")


def root(now: datetime = T0, life: timedelta = LIFE) -> Authority:
    key = generate_key()
    cert = self_signed_root(key=key, trust_domain=TD, now=now, lifetime=life)
    return Authority(cert=cert, key=key, anchors=(cert,))


OLD, NEW = root(), root(T0 + timedelta(days=80))


# The moment the active root has used `f` of its life (its NotBefore is backdated).
def at(f: float) -> datetime:
    return T0 - LEAF_BACKDATE + (LIFE + LEAF_BACKDATE) * f


def state(
    prepared_since: datetime | None = None, retired_until: datetime | None = None
) -> SlotState:
    return SlotState(
        active=Slot(authority=OLD, since=T0),
        prepared=Slot(authority=NEW, since=prepared_since) if prepared_since else None,
        retired=Slot(authority=root(), since=T0, until=retired_until) if retired_until else None,
    )


@pytest.mark.parametrize(
    ("case", "s", "now", "expected"),
    [
        ("half of life used", state(), at(0.5), False),
        ("just before the prepare point", state(), at(0.79), False),
        ("at the prepare point", state(), at(0.8), True),
        ("past the prepare point", state(), at(0.95), True),
        ("already prepared", state(prepared_since=at(0.8)), at(0.9), False),
        ("a retired CA still in the bundle", state(retired_until=at(0.99)), at(0.9), False),
    ],
)
def test_should_prepare_next(case: str, s: SlotState, now: datetime, expected: bool) -> None:
    assert should_prepare_next(s, now, POLICY) is expected, case


P = T0 + timedelta(days=80)


@pytest.mark.parametrize(
    ("case", "s", "now", "expected"),
    [
        ("nothing prepared", state(), P + DELAY * 10, False),
        ("prepared a second ago", state(prepared_since=P), P + timedelta(seconds=1), False),
        ("one second short of the delay", state(prepared_since=P), P + DELAY - timedelta(seconds=1), False),
        ("exactly the delay", state(prepared_since=P), P + DELAY, True),
        ("well past the delay", state(prepared_since=P), P + DELAY * 5, True),
        ("previous retired CA has live leaves", state(P, retired_until=P + DELAY * 3), P + DELAY * 2, False),
        ("previous retired CA's leaves all expired", state(P, retired_until=P + DELAY), P + DELAY * 2, True),
    ],
)  # fmt: skip
def test_should_activate_next(case: str, s: SlotState, now: datetime, expected: bool) -> None:
    assert should_activate_next(s, now, POLICY) is expected, case


@pytest.mark.parametrize(
    ("case", "s", "now", "expected"),
    [
        ("nothing retired", state(), P, False),
        ("before its last leaf expires", state(retired_until=P), P - timedelta(seconds=1), False),
        ("when its last leaf expires", state(retired_until=P), P, True),
        ("after", state(retired_until=P), P + timedelta(days=1), True),
    ],
)
def test_should_drop_retired(case: str, s: SlotState, now: datetime, expected: bool) -> None:
    assert should_drop_retired(s, now) is expected, case


@pytest.mark.parametrize(
    ("case", "verb", "message"),
    [
        ("prepare twice", lambda: prepare(state(P), root(), P), "already prepared"),
        ("prepare the active CA", lambda: prepare(state(), OLD, P), "is the active one"),
        ("prepare an expired CA", lambda: prepare(state(), NEW, P + LIFE * 2), "expired"),
        ("activate with nothing prepared", lambda: activate(state(), P, POLICY), "no CA is prepared"),
        ("activate before the delay", lambda: activate(state(P), P + DELAY / 2, POLICY), "propagation delay"),
        ("activate while the retired CA has live leaves", lambda: activate(state(P, retired_until=P + DELAY * 9), P + DELAY * 2, POLICY), "still retired"),
        ("retire with nothing retired", lambda: retire(state(), P), "no CA is retired"),
        ("retire before the last leaf expired", lambda: retire(state(retired_until=P), P - DELAY), "force"),
    ],
)  # fmt: skip
def test_verbs_refused(case: str, verb: Callable[[], object], message: str) -> None:
    with pytest.raises(SlotError, match=message):
        verb()


def test_force_activates_early_and_drops_early() -> None:
    """The operator's escape hatches: activate before the delay, drop a compromised CA."""
    s = activate(state(P), P + DELAY / 2, POLICY, force=True)
    assert s.active.authority is NEW
    assert retire(s, P + DELAY, force=True).retired is None


def _leaf(authority: Authority, now: datetime) -> list[x509.Certificate]:
    key = generate_key()
    cert = leaf_certificate(
        spiffe_id=ME,
        public_key=key.public_key(),
        issuer_cert=authority.cert,
        issuer_key=authority.key,
        now=now,
        ttl=MAX_TTL,
    )
    return [cert, *authority.chain]


def test_a_whole_rotation_never_leaves_a_leaf_without_a_trusted_root() -> None:
    """Every leaf signed at any step verifies against every bundle published from the moment
    it was signed until it expires; the bundles grow before they shrink."""
    s = SlotState(active=Slot(authority=OLD, since=T0))
    now = at(0.8)
    assert should_prepare_next(s, now, POLICY)
    s = prepare(s, NEW, now)
    assert s.bundle() == (OLD.cert, NEW.cert)
    assert s.material("self-signed").signing_cert == OLD.cert, "prepared does not sign"
    old_leaf = _leaf(OLD, now + DELAY - timedelta(seconds=1))  # signed just before activation

    now += DELAY
    assert should_activate_next(s, now, POLICY)
    s = activate(s, now, POLICY)
    assert s.material("self-signed").signing_cert == NEW.cert
    assert s.retired is not None and s.retired.until == now + MAX_TTL
    assert s.bundle() == (NEW.cert, OLD.cert)
    new_leaf = _leaf(NEW, now)
    for chain in (old_leaf, new_leaf):
        verify_svid(chain, list(s.bundle()), now=now)
    assert describe(s, now, POLICY)["due"] == "none"

    now += MAX_TTL
    assert should_drop_retired(s, now)
    assert describe(s, now, POLICY)["due"] == "retire"
    s = retire(s, now)
    assert s.bundle() == (NEW.cert,)
    verify_svid(new_leaf, list(s.bundle()), now=now - timedelta(seconds=1))
    with pytest.raises(CertsError):
        verify_svid(_leaf(OLD, now), list(s.bundle()), now=now)


def test_retired_until_is_capped_by_the_old_ca_expiry() -> None:
    """Leaves are capped at their issuer's NotAfter, so the retired CA leaves no later."""
    short = root(T0, timedelta(hours=2))
    s = SlotState(active=Slot(authority=short, since=T0), prepared=Slot(authority=NEW, since=T0))
    s = activate(s, T0 + DELAY, POLICY)
    assert s.retired is not None and s.retired.until == short.cert.not_valid_after_utc


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="fraction"):
        SlotPolicy(prepare_at=0)
    with pytest.raises(ValueError, match="negative"):
        SlotPolicy(propagation_delay=timedelta(seconds=-1))
