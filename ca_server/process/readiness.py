"""What `/readyz` says: ready while every worker serves and no check names a problem.

A check returns None when all is well, else one sentence for the `/readyz` body (anyone
reaching the admin port reads it: no file paths, no secrets). `watch` runs the checks on a
tick too, so a check that logs its changes (the clock, the token issuer's keys) logs them
even when nobody probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ca_server.authority.refresh import ReloadHealth

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
