"""What `/readyz` says: ready while every worker serves and no check names a problem.

A check returns None when all is well, else one sentence for the `/readyz` body (anyone
reaching the admin port reads it: no file paths, no secrets). `watch` runs the checks on a
tick too, so a check that logs its changes (the clock, the token issuer's keys) logs them
even when nobody probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from ca_server.authn.jwks import FETCH_DEADLINE_S, fetch_issuer_keys
from ca_server.authority.refresh import ReloadHealth
from ca_server.errors import UpstreamUnavailable

log = logging.getLogger("ca_server")

Check = Callable[[], str | None]


class Workers(Protocol):
    def readiness(self) -> tuple[bool, str]: ...


class Readiness:
    """`/readyz`'s answer from the workers, the material checks and the extra `checks`."""

    def __init__(self, workers: Workers, health: ReloadHealth) -> None:
        self._workers = workers
        self.health = health
        self._checks: list[Check] = []

    def add(self, check: Check) -> None:
        self._checks.append(check)

    def __call__(self) -> tuple[bool, str]:
        ready, detail = self._workers.readiness()
        problems = [problem for problem in (check() for check in self._checks) if problem]
        return ready and not problems, "; ".join([*problems, detail, self.health.detail()])

    async def watch(self, interval_s: float) -> None:
        """Run the checks every `interval_s` until cancelled."""
        while True:
            for check in self._checks:
                check()
            await asyncio.sleep(interval_s)


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
