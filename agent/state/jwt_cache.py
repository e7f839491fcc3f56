"""JWT-SVIDs the agent hands out, cached per audience set until half their lifetime.

One CA call per audience set at a time (single flight: concurrent callers
share it), at most `MAX_ENTRIES` audience sets held (the oldest goes first),
and the audience list is checked, against the CA's own limit, before anything is asked
of the CA.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import grpc

from agent.errors import AgentError, BadRequest
from agent.upstream.identity_client import MintedJwt
from certs.errors import InvalidAudience
from certs.jwt_rules import check_audiences

MAX_ENTRIES = 128

AudienceKey = tuple[str, ...]


class NotEntitled(AgentError):
    code = grpc.StatusCode.PERMISSION_DENIED


def audience_key(audiences: Sequence[str]) -> AudienceKey:
    """The audience set as a cache key, or `BadRequest` (INVALID_ARGUMENT) stating the limit
    broken: the CA's own limit (`certs.jwt_rules`), so nothing it would refuse is sent."""
    try:
        return tuple(sorted(check_audiences(audiences)))
    except InvalidAudience as exc:
        raise BadRequest(str(exc)) from None


class JwtSvidCache:
    """`get(audiences)`: a fresh JWT-SVID from the cache or from `mint`."""

    def __init__(
        self,
        mint: Callable[[AudienceKey], Awaitable[MintedJwt]],
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._mint = mint
        self._now = now
        self._entries: OrderedDict[AudienceKey, MintedJwt] = OrderedDict()
        self._pending: dict[AudienceKey, asyncio.Future[MintedJwt]] = {}

    async def get(self, key: AudienceKey) -> MintedJwt:
        cached = self._entries.get(key)
        if cached is not None and cached.fresh(self._now()):
            return cached
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._mint_and_keep(key))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(pending)

    def _settle(self, key: AudienceKey, done: asyncio.Future[MintedJwt]) -> None:
        """The call ended: the next caller asks again; a failure nobody awaited is not logged."""
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()

    def forget(self) -> None:
        """Drop every cached token (the agent's identity or CA changed)."""
        self._entries.clear()

    async def _mint_and_keep(self, key: AudienceKey) -> MintedJwt:
        minted = await self._mint(key)
        self._entries[key] = minted
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return minted
