"""When to renew the SVID, and the renewal loop (istio secretcache.go, SPIRE's rotator).

Renewal here is the agent's: its SVID replaced before it expires, each CSR with a fresh
key as Istio's agent does (not the CA's *rotation*, which moves the CA to a new key).
It is due at `expiry - r * lifetime` with `r = ratio +/- jitter`; a CSR
that fails is retried with jittered exponential backoff while the current
certificate keeps being served. The backoff never runs past that certificate's expiry,
and while the agent holds no valid certificate it stays short (`backoff_unserved`), so an
agent comes back within seconds of a CA outage longer than its certificate's life; a
definitive refusal still waits the longest backoff. Every schedule carries a generation, so a
timer that was overtaken (by a forced refresh or a newer schedule) does nothing.
All timing goes through an injected `Clock` and `random.Random`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from agent.errors import AgentError, CaRequestFailed
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache
from agent.state.svid import Svid

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Wall-clock time and sleeping, replaceable in tests."""

    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewalPolicy:
    """When the SVID is renewed: grace ratio and jitter of docs/COMPATIBILITY.md §2, and the retry backoff
    after a failed CSR."""

    grace_ratio: float = 0.5
    grace_jitter: float = 0.01
    backoff_min: timedelta = timedelta(milliseconds=500)
    backoff_max: timedelta = timedelta(seconds=60)
    backoff_jitter: float = 0.2
    # The longest wait while the agent holds no valid certificate: every workload of the pod
    # is failing then, so the CA is asked again within seconds of coming back (jittered, so a
    # mesh whose certificates all expired during an outage does not ask in the same second).
    backoff_unserved: timedelta = timedelta(seconds=2)
    # When the root file stops trusting the current certificate's root (a CA dropped early,
    # e.g. after a compromise), renew at a random moment within this window: soon, but
    # without every agent of the mesh asking the CA in the same second.
    root_loss_window: timedelta = timedelta(seconds=30)

    def renew_at(self, svid: Svid, rng: random.Random) -> datetime:
        """`expiry - r * lifetime`, lifetime counted from receipt as Istio does."""
        ratio = self.grace_ratio + rng.uniform(-self.grace_jitter, self.grace_jitter)
        return svid.not_after - svid.lifetime * ratio

    def backoff(self, failures: int, rng: random.Random) -> timedelta:
        """Wait after the `failures`-th consecutive failure: 0.5 s, 1 s, 2 s ... 60 s, +/- 20%."""
        low, high = self.backoff_min.total_seconds(), self.backoff_max.total_seconds()
        base = min(high, low * 2 ** min(failures - 1, 32))
        jittered = base * (1.0 + rng.uniform(-self.backoff_jitter, self.backoff_jitter))
        return timedelta(seconds=min(high, max(low, jittered)))

    def retry_wait(
        self, failures: int, valid_until: datetime | None, now: datetime, rng: random.Random
    ) -> timedelta:
        """The wait after a retryable failure: the backoff, but never past the expiry of the
        certificate still served (`valid_until`), and at most `backoff_unserved` (jittered)
        once there is none."""
        wait = self.backoff(failures, rng)
        if valid_until is not None and valid_until > now:
            return min(wait, valid_until - now)
        short = self.backoff_unserved * (1.0 + rng.uniform(-self.backoff_jitter, 0.0))
        return min(wait, short)


def anchored(svid: Svid, roots: Sequence[x509.Certificate]) -> bool:
    """The SVID's chain ends at one of `roots`: its topmost certificate is one of them or is
    signed by one of them."""
    top = [c for c in svid.chain if c.subject != c.issuer][-1:] or list(svid.chain[:1])
    for root in roots:
        if root in top:
            return True
        try:
            top[0].verify_directly_issued_by(root)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False


def renew_for_roots(
    svid: Svid,
    roots: Sequence[x509.Certificate],
    now: datetime,
    window: timedelta,
    rng: random.Random,
) -> datetime | None:
    """When to renew because `roots` (the published bundle) no longer anchor `svid`; None
    while they do. A random point of `window`, never past the certificate's expiry."""
    if anchored(svid, roots):
        return None
    span = max(timedelta(0), min(window, svid.not_after - now))
    return now + span * rng.random()


class Renewer:
    """Keeps the cache holding a fresh SVID; `refresh` is single-flight."""

    def __init__(
        self,
        *,
        issue: Callable[[], Awaitable[Svid]],
        cache: SecretCache,
        clock: Clock,
        rng: random.Random,
        policy: RenewalPolicy,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._issue = issue
        self._metrics = metrics
        self._refused = ""  # the definitive refusal already reported
        self._cache = cache
        self._clock = clock
        self._rng = rng
        self._policy = policy
        self._inflight: asyncio.Future[Svid] | None = None
        self._generation = 0
        self._due: datetime = clock.now()
        self._rescheduled = asyncio.Event()
        self.failures = 0
        self.renewals = 0
        self.stale_fires = 0

    @property
    def due(self) -> datetime:
        """When the next CSR is scheduled."""
        return self._due

    @property
    def generation(self) -> int:
        return self._generation

    async def refresh(self) -> Svid:
        """Issue a new SVID now; concurrent callers share one CSR."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._issue_and_install())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, future: asyncio.Future[Svid]) -> None:
        if self._inflight is future:
            self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved here so a failure nobody awaited is not logged twice

    async def _issue_and_install(self) -> Svid:
        svid = await self._issue()
        self._cache.set_svid(svid)
        self.failures = 0
        self.renewals += 1
        self._refused = ""
        if self._metrics is not None:
            self._metrics.set("last_rotation_timestamp_seconds", self._clock.now().timestamp())
        due = self._policy.renew_at(svid, self._rng)
        log.info(
            "certificate %s of %s valid until %s; renewal due %s",
            svid.serial,
            svid.spiffe_id,
            svid.not_after.isoformat(),
            due.isoformat(),
        )
        self._schedule(due)
        return svid

    def retry_now(self) -> None:
        """Try again at once (after SIGHUP: the token or root may have been fixed)."""
        self._refused = ""
        self._schedule(self._clock.now())

    def _schedule(self, when: datetime) -> int:
        self._generation += 1
        self._due = when
        self._rescheduled.set()
        return self._generation

    async def run(self) -> None:
        """Obtain the first SVID at once, then renew each when due, until cancelled."""
        generation = self._schedule(self._clock.now())
        while True:
            generation, due = self._generation, self._due
            self._rescheduled.clear()
            if not await self._sleep_until(due):
                continue  # the schedule changed while sleeping
            await self.fire(generation)

    async def fire(self, generation: int) -> bool:
        """Run the renewal scheduled as `generation`; a stale one does nothing (returns False)."""
        if generation != self._generation:
            self.stale_fires += 1
            return False
        self._generation += 1  # consumed: the same item can never fire twice
        try:
            await self.refresh()
        except AgentError as exc:
            self.failures += 1
            self._cache.set_svid_error(exc.public_message)
            self._schedule(self._clock.now() + self._after_failure(exc))
        return True

    def _after_failure(self, exc: AgentError) -> timedelta:
        """How long to wait; a definitive refusal waits the maximum and is reported once."""
        if isinstance(exc, CaRequestFailed) and exc.definitive:
            wait = self._policy.backoff_max
            if exc.public_message != self._refused:
                self._refused = exc.public_message
                log.error(
                    "the CA refused the CSR; asking again only every %.0fs (SIGHUP retries at "
                    "once), serving %s: %s",
                    wait.total_seconds(),
                    self._serving(),
                    exc.public_message,
                )
            return wait
        svid, now = self._cache.snapshot.svid, self._clock.now()
        valid_until = svid.not_after if svid is not None else None
        wait = self._policy.retry_wait(self.failures, valid_until, now, self._rng)
        log.warning(
            "CSR failed (%d in a row), retrying in %.1fs, serving %s: %s",
            self.failures,
            wait.total_seconds(),
            self._serving(),
            exc.public_message,
        )
        return wait

    async def follow_roots(self) -> None:
        """Renew early (jittered) when the root file drops the current certificate's root.

        Only a root that *left* counts: a certificate the root file never anchored (a root
        file of another CA) is renewed on its normal schedule, not every window."""
        box = self._cache.subscribe()
        trusted: tuple[str, bool] = ("", False)  # (serial, anchored by the last root file)
        try:
            while (snapshot := await box.get()) is not None:
                roots, svid = snapshot.file_roots, snapshot.svid
                if roots is None or svid is None:
                    continue
                was = trusted[1] if trusted[0] == svid.serial else False
                when = renew_for_roots(
                    svid, roots.certs, self._clock.now(), self._policy.root_loss_window, self._rng
                )
                trusted = (svid.serial, when is None)
                if was and when is not None and when < self._due:
                    log.warning(
                        "the root of certificate %s left the trust bundle; renewing at %s",
                        svid.serial,
                        when.isoformat(),
                    )
                    self._schedule(when)
        finally:
            self._cache.unsubscribe(box)

    def _serving(self) -> str:
        svid = self._cache.snapshot.svid
        if svid is None:
            return "nothing yet"
        if svid.not_after <= self._clock.now():
            return f"nothing valid (certificate {svid.serial} expired)"
        return f"certificate {svid.serial}"

    async def _sleep_until(self, when: datetime) -> bool:
        """True when `when` was reached, False when the schedule changed first."""
        sleeper = asyncio.ensure_future(self._clock.sleep_until(when))
        changed = asyncio.ensure_future(self._rescheduled.wait())
        try:
            done, _ = await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, changed):
                task.cancel()
        return sleeper in done and changed not in done
