"""The agent's renewal timing with an injected clock and random source: no sleeping, no real CA."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from agent.errors import CaRequestFailed
from agent.state.cache import SecretCache
from agent.state.renewal import RenewalPolicy, Renewer
from agent.state.svid import Svid
from tests.support.agent import make_svid

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """Time moves only when a test calls `advance`."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((when, future))
        await future

    async def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        for when, future in self._sleepers:
            if when <= self._now and not future.done():
                future.set_result(None)
        self._sleepers = [(w, f) for w, f in self._sleepers if not f.done()]
        await settle()


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class Issuer:
    """Counts CSRs; fails while `failing` is set; SVIDs of `ttl` issued at the fake now."""

    def __init__(self, clock: FakeClock, ttl: float = 100.0) -> None:
        self.clock = clock
        self.ttl = ttl
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None
        self._template = make_svid(now=T0, ttl=timedelta(seconds=ttl))

    async def __call__(self) -> Svid:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise CaRequestFailed("CA unreachable (test)")
        return make_svid(now=self.clock.now(), ttl=timedelta(seconds=self.ttl))


def renewer_for(clock: FakeClock, issuer: Issuer, seed: int = 7) -> tuple[Renewer, SecretCache]:
    cache = SecretCache()
    renewer = Renewer(
        issue=issuer, cache=cache, clock=clock, rng=random.Random(seed), policy=RenewalPolicy()
    )
    return renewer, cache


def test_renewal_is_due_at_half_life_within_the_jitter() -> None:
    svid = make_svid(now=T0, ttl=timedelta(seconds=1000))
    policy = RenewalPolicy(grace_ratio=0.5, grace_jitter=0.01)
    dues = {policy.renew_at(svid, random.Random(seed)) for seed in range(50)}
    assert len(dues) > 40  # jittered, not one instant for every pod
    for due in dues:
        assert T0 + timedelta(seconds=490) <= due <= T0 + timedelta(seconds=510)


def test_lifetime_counts_from_receipt_not_the_backdated_not_before() -> None:
    svid = make_svid(now=T0, ttl=timedelta(seconds=10))  # NotBefore is T0 - 2 min
    due = RenewalPolicy(grace_jitter=0.0).renew_at(svid, random.Random(1))
    assert due == T0 + timedelta(seconds=5)


def test_backoff_grows_from_half_a_second_to_a_minute_with_jitter() -> None:
    policy = RenewalPolicy()
    rng = random.Random(3)
    waits = [policy.backoff(n, rng).total_seconds() for n in range(1, 16)]
    assert 0.5 <= waits[0] <= 0.6
    assert 0.8 <= waits[1] <= 1.2
    assert all(0.5 <= w <= 60.0 for w in waits)
    assert waits[-1] >= 48.0  # reached the cap (minus jitter)
    assert len({policy.backoff(3, random.Random(s)) for s in range(20)}) > 10


async def test_concurrent_refreshes_share_one_csr() -> None:
    clock = FakeClock()
    issuer = Issuer(clock)
    issuer.gate = asyncio.Event()
    renewer, cache = renewer_for(clock, issuer)
    waiters = [asyncio.ensure_future(renewer.refresh()) for _ in range(5)]
    await settle()
    issuer.gate.set()
    results = await asyncio.gather(*waiters)
    assert issuer.calls == 1
    assert len({r.serial for r in results}) == 1
    assert cache.snapshot.svid is results[0]


async def test_a_stale_scheduled_renewal_does_nothing() -> None:
    clock = FakeClock()
    issuer = Issuer(clock)
    renewer, _ = renewer_for(clock, issuer)
    await renewer.refresh()
    scheduled = renewer.generation
    await renewer.refresh()  # e.g. forced: supersedes the schedule above
    assert issuer.calls == 2
    assert await renewer.fire(scheduled) is False
    assert issuer.calls == 2
    current = renewer.generation
    assert await renewer.fire(current) is True
    assert await renewer.fire(current) is False  # the same item never fires twice
    assert issuer.calls == 3
    assert renewer.stale_fires == 2


async def test_run_issues_at_once_then_at_each_due_time() -> None:
    clock = FakeClock()
    issuer = Issuer(clock, ttl=100)
    renewer, cache = renewer_for(clock, issuer)
    task = asyncio.ensure_future(renewer.run())
    try:
        await settle()
        assert issuer.calls == 1
        first = cache.snapshot.svid
        assert first is not None
        due = (renewer.due - clock.now()).total_seconds()
        assert 49 <= due <= 51
        await clock.advance(due - 1)
        assert issuer.calls == 1
        await clock.advance(1.01)
        assert issuer.calls == 2
        assert cache.snapshot.svid is not first
    finally:
        task.cancel()


async def test_failures_keep_serving_and_back_off_until_the_ca_returns() -> None:
    clock = FakeClock()
    issuer = Issuer(clock, ttl=100)
    renewer, cache = renewer_for(clock, issuer)
    task = asyncio.ensure_future(renewer.run())
    try:
        await settle()
        serving = cache.snapshot.svid
        assert serving is not None
        issuer.failing = True
        await clock.advance((renewer.due - clock.now()).total_seconds())
        waits = []
        for _ in range(6):
            assert cache.snapshot.svid is serving  # still served while the CA is down
            wait = (renewer.due - clock.now()).total_seconds()
            waits.append(wait)
            await clock.advance(wait)
        assert renewer.failures == 7
        assert "CA unreachable" in cache.snapshot.svid_error
        assert waits == sorted(waits) or waits[-1] > waits[0]
        assert 0.5 <= waits[0] <= 1.2 and waits[-1] >= 12.8
        issuer.failing = False
        await clock.advance((renewer.due - clock.now()).total_seconds())
        assert cache.snapshot.svid is not serving
        assert renewer.failures == 0 and cache.snapshot.svid_error == ""
    finally:
        task.cancel()


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_grace_ratio_moves_the_due_time(ratio: float) -> None:
    svid = make_svid(now=T0, ttl=timedelta(seconds=100))
    due = RenewalPolicy(grace_ratio=ratio, grace_jitter=0.0).renew_at(svid, random.Random(0))
    assert due == T0 + timedelta(seconds=100 * (1 - ratio))


def test_retry_waits_never_pass_the_expiry_and_stay_short_without_a_certificate() -> None:
    policy = RenewalPolicy()
    rng = random.Random(5)
    # holding a certificate valid for 7 s more: the 30 s-ish backoff is cut to its expiry
    assert policy.retry_wait(8, T0 + timedelta(seconds=7), T0, rng) == timedelta(seconds=7)
    # still far from expiry: the ordinary backoff
    assert policy.retry_wait(3, T0 + timedelta(hours=1), T0, rng) <= timedelta(seconds=2.4)
    assert policy.retry_wait(9, T0 + timedelta(hours=1), T0, rng) >= timedelta(seconds=48)
    # nothing valid (none yet, or expired): a few seconds at most, whatever the failure count
    for failures in (1, 5, 12, 40):
        for valid_until in (None, T0, T0 - timedelta(seconds=30)):
            wait = policy.retry_wait(failures, valid_until, T0, rng)
            assert wait <= policy.backoff_unserved


async def test_an_outage_longer_than_the_certificate_retries_within_seconds_after_expiry() -> None:
    """CA down for 120 s under 20 s certificates: once the certificate expired, the agent asks
    at least every `backoff_unserved`, so it recovers within seconds of the CA's return; a
    definitive refusal still waits the longest backoff."""
    clock = FakeClock()
    issuer = Issuer(clock, ttl=20)
    renewer, cache = renewer_for(clock, issuer)
    task = asyncio.ensure_future(renewer.run())
    try:
        await settle()
        serving = cache.snapshot.svid
        assert serving is not None
        issuer.failing = True
        waits: list[float] = []
        while clock.now() < T0 + timedelta(seconds=120):
            wait = (renewer.due - clock.now()).total_seconds()
            waits.append(wait)
            await clock.advance(wait)
        # no wait ever jumped over the expiry, and every wait after it was short
        assert all(w <= 20 for w in waits)
        expired_at = (serving.not_after - T0).total_seconds()
        elapsed, after = 0.0, []
        for w in waits:
            if elapsed >= expired_at:
                after.append(w)
            elapsed += w
        assert after and max(after) <= 2.0
        issuer.failing = False
        returned = clock.now()
        await clock.advance((renewer.due - clock.now()).total_seconds())
        assert cache.snapshot.svid is not serving
        assert clock.now() - returned <= timedelta(seconds=2)
    finally:
        task.cancel()


async def test_a_definitive_refusal_without_a_certificate_still_waits_the_longest() -> None:
    clock = FakeClock()

    async def refuse() -> Svid:
        raise CaRequestFailed("PERMISSION_DENIED (test)", definitive=True)

    cache = SecretCache()
    renewer = Renewer(
        issue=refuse, cache=cache, clock=clock, rng=random.Random(1), policy=RenewalPolicy()
    )
    await renewer.fire(renewer.generation)
    assert renewer.due - clock.now() == RenewalPolicy().backoff_max
