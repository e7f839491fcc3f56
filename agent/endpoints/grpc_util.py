"""Small gRPC helpers shared by the SDS and Workload API servicers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from agent.errors import AgentError, BadRequest
from agent.logs import printable

if TYPE_CHECKING:
    from agent.state.identity import IdentityState, StateLookup

log = logging.getLogger(__name__)


class Undecodable:
    """Stands in for a request that is not valid protobuf, so the handler can refuse it."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


def tolerant(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: garbage becomes `Undecodable`.

    grpc answers a deserializer's exception with a generic status and logs a
    traceback; the handler turns `Undecodable` into INVALID_ARGUMENT instead.
    """
    name = message_type.DESCRIPTOR.name

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError):
            return Undecodable(name)

    return parse


def require_decoded(request: Any) -> None:
    """`BadRequest` (INVALID_ARGUMENT) if `request` did not decode."""
    if isinstance(request, Undecodable):
        raise BadRequest(f"the request is not a valid {request.what} message")


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: AgentError) -> NoReturn:
    """End the RPC with the error's status and public message (never key material)."""
    # DEBUG: the client is told; a local client refusing itself in a loop must not fill the log
    log.debug("RPC refused with %s: %s", exc.code.name, printable(exc.public_message))
    await context.abort(exc.code, exc.public_message)
    raise AssertionError("context.abort raises")


async def lookup_state(
    states: StateLookup, context: grpc.aio.ServicerContext[Any, Any]
) -> IdentityState:
    """The caller's state, or the call ended with the lookup's refusal (a node agent that
    cannot attest the caller: PERMISSION_DENIED naming what it found)."""
    try:
        return states(context)
    except AgentError as exc:
        await abort_with(context, exc)


async def pump_requests(requests: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
    """Copy a client stream into `queue` (bounded: a flood waits), then None at the end."""
    try:
        async for request in requests:
            await queue.put(request)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        log.debug("request stream ended: %s", printable(str(exc)))
    await queue.put(None)  # not on cancellation: then nobody reads the queue any more
