"""What `/readyz` says: ready while every part is; the body lists what each says.

A part answers (ready, detail): the workers (all serving), the material checks (always
ready: a failing reload keeps serving the previous material), a CA key in an HSM, and the
`problem` checks added with `add`: None when all is well, else one sentence (the clock,
an OIDC issuer's keys). Anyone reaching the admin port reads the body: no file paths, no
secrets. Parts not ready come first. `watch` runs the problem checks on a tick too, so a
check that logs its changes logs them even when nobody probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from ca_server.authn.jwks import FETCH_DEADLINE_S, fetch_issuer_keys
from ca_server.authority.refresh import ReloadHealth
from ca_server.errors import UpstreamUnavailable

log = logging.getLogger("ca_server")

Part = Callable[[], tuple[bool, str]]
Check = Callable[[], str | None]


class Workers(Protocol):
    def readiness(self) -> tuple[bool, str]: ...


W = TypeVar("W", bound=Workers)


class Readiness(Generic[W]):
    """`/readyz`'s answer: the workers, the material checks, then every part added."""

    def __init__(self, pool: W, health: ReloadHealth) -> None:
        self.pool = pool
        self.health = health
        self._parts: list[Part] = [pool.readiness, lambda: (True, health.detail())]
        self._checks: list[Check] = []

    def add_part(self, part: Part) -> None:
        self._parts.append(part)

    def add(self, check: Check) -> None:
        """A check naming a problem (not ready) or None."""
        self._checks.append(check)
        self._parts.append(lambda: _as_part(check()))

    def __call__(self) -> tuple[bool, str]:
        answers = [part() for part in self._parts]
        ready = all(ok for ok, _ in answers)
        ordered = [d for ok, d in answers if not ok] + [d for ok, d in answers if ok]
        return ready, "; ".join(d for d in ordered if d)

    async def watch(self, interval_s: float) -> None:
        """Run the problem checks every `interval_s` until cancelled."""
        while True:
            for check in self._checks:
                check()
            await asyncio.sleep(interval_s)


def _as_part(problem: str | None) -> tuple[bool, str]:
    return problem is None, problem or ""


class IssuerKeysCheck:
    """Not ready until the OIDC issuer's keys were fetched once (discovery, then its JWKS):
    the network may come later, so this waits instead of refusing to start. Retried every
    `RETRY_S`; each change of the reason is logged once."""

    RETRY_S = 2.0

    def __init__(self, issuer_url: str, deadline_s: float = FETCH_DEADLINE_S) -> None:
        self._url = issuer_url
        self._deadline = deadline_s
        self._problem: str | None = f"the token issuer's keys ({issuer_url}) are not fetched yet"

    def __call__(self) -> str | None:
        return self._problem

    async def run(self) -> None:
        """Fetch until it succeeds once, then stop (workers fetch and refresh their own)."""
        said = ""
        while True:
            try:
                keys = await fetch_issuer_keys(self._url, self._deadline)
            except UpstreamUnavailable as exc:
                self._problem = f"cannot fetch the token issuer's keys: {exc.public_message}"
                if self._problem != said:
                    log.error(
                        "%s; not ready until it can (retrying every %gs)",
                        self._problem,
                        self.RETRY_S,
                    )
                    said = self._problem
                await asyncio.sleep(self.RETRY_S)
                continue
            self._problem = None
            log.info("token issuer %s: %d signing key(s) fetched", self._url, len(keys.keys))
            return
