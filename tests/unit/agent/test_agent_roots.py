"""The agent renews, jittered over a window, when the published bundle drops the root of its
current certificate (a CA retired early after a compromise); a bundle that still anchors
it (a root prepared or added) changes nothing."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from agent.state.renewal import RenewalPolicy, anchored, renew_for_roots
from agent.state.svid import RootBundle
from tests.support.agent import make_svid
from tests.unit.agent.test_renewal import T0, FakeClock, Issuer, renewer_for, settle

WINDOW = timedelta(seconds=30)


def test_anchored_and_renewal_point() -> None:
    svid = make_svid(now=T0, ttl=timedelta(hours=1))
    other = make_svid(now=T0).roots.certs
    mine = svid.roots.certs
    assert anchored(svid, mine) and anchored(svid, (*other, *mine))
    assert not anchored(svid, other)
    assert renew_for_roots(svid, (*mine, *other), T0, WINDOW, random.Random(1)) is None
    points = [renew_for_roots(svid, other, T0, WINDOW, random.Random(s)) for s in range(50)]
    assert all(p is not None and T0 <= p <= T0 + WINDOW for p in points)
    assert len(set(points)) > 40, "spread over the window, not all at once"
    short = make_svid(now=T0, ttl=timedelta(seconds=10))
    late = renew_for_roots(short, other, T0, WINDOW, random.Random(2))
    assert late is not None and late <= short.not_after, "never after the certificate expires"


def test_renewer_renews_early_when_its_root_leaves_the_bundle() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        issuer = Issuer(clock, ttl=1000.0)
        renewer, cache = renewer_for(clock, issuer)
        assert renewer._policy == RenewalPolicy()
        runner = asyncio.ensure_future(renewer.run())
        follower = asyncio.ensure_future(renewer.follow_roots())
        await settle()
        svid = cache.snapshot.svid
        assert svid is not None and issuer.calls == 1
        normal_due = renewer.due
        cache.set_file_roots(RootBundle.of(svid.roots.certs, make_svid(now=T0).roots.certs))
        await settle()
        assert renewer.due == normal_due, "a bundle that still anchors the certificate"
        cache.set_file_roots(make_svid(now=T0).roots)  # only a foreign root now
        await settle()
        assert renewer.due <= clock.now() + WINDOW < normal_due
        await clock.advance(WINDOW.total_seconds())
        assert issuer.calls == 2, "renewed within the window"
        for task in (runner, follower):
            task.cancel()

    asyncio.run(scenario())


def test_a_root_file_that_never_anchored_the_certificate_causes_no_renewal_loop() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        issuer = Issuer(clock, ttl=1000.0)
        renewer, cache = renewer_for(clock, issuer)
        cache.set_file_roots(make_svid(now=T0).roots)  # another CA's root, from the start
        runner = asyncio.ensure_future(renewer.run())
        follower = asyncio.ensure_future(renewer.follow_roots())
        await settle()
        due = renewer.due
        cache.set_file_roots(make_svid(now=T0).roots)
        await settle()
        assert renewer.due == due and issuer.calls == 1
        for task in (runner, follower):
            task.cancel()

    asyncio.run(scenario())
