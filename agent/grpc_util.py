"""Small gRPC helpers shared by the SDS and Workload API servicers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from agent.errors import AgentError

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: AgentError) -> NoReturn:
    """End the RPC with the error's status and public message (never key material)."""
    log.info("RPC refused with %s: %s", exc.code.name, exc.public_message)
    await context.abort(exc.code, exc.public_message)
    raise AssertionError("context.abort raises")


async def pump_requests(requests: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
    """Copy a client stream into `queue`, then None once the client is done sending."""
    try:
        async for request in requests:
            await queue.put(request)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        log.debug("request stream ended: %s", exc)
    finally:
        queue.put_nowait(None)
