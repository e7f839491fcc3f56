"""The one place where the CA's errors become gRPC statuses, for every servicer of the CA.

`@refusals` wraps a servicer method (IstioCertificateService, bulwark.v1.WorkloadIdentityService):
a `CaError` is counted (`CaMetrics.refused`), logged (`CaEventLog.refused`) and answered
with its own code and public message (`ca_server.errors` draws the tree); any other
exception is logged with its traceback and answered INTERNAL with a generic message, so
its text never reaches a client. Whatever the error, when it comes from running out of
file descriptors (`ca_server.descriptors`) the caller is answered UNAVAILABLE instead
(`OutOfDescriptors`), and that is logged as such. A wrapped method takes one more argument,
the `Call`, where it notes the caller once authenticated, for the refusal's log line.

A decorator rather than a grpc.aio server interceptor: an interceptor sees handlers, not
the exceptions they raise, nor the caller a method has established.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import grpc

from ca_server.descriptors import out_of_descriptors
from ca_server.errors import CaError, OutOfDescriptors
from ca_server.identity import Caller, cluster_id_of
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics

# What a caller is told about an exception no CaError describes (a bug): its text stays in our log.
UNEXPECTED = CaError("internal error in the CA; see its log")
NO_DESCRIPTORS = OutOfDescriptors("the CA is out of file descriptors; retry shortly")


class Call:
    """What one call has established so far, for its log line (and the cluster it named,
    for the refusal metric's `cluster` label)."""

    __slots__ = ("caller", "cluster_id", "peer")

    def __init__(self, peer: str, cluster_id: str = "") -> None:
        self.peer = peer
        self.cluster_id = cluster_id
        self.caller: Caller | None = None


class Refusing(Protocol):
    """A servicer `refusals` wraps: where its refusals are counted and logged."""

    metrics: CaMetrics
    events: CaEventLog


S = TypeVar("S", bound=Refusing)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def note_refusal(metrics: CaMetrics, events: CaEventLog, exc: CaError, call: Call) -> None:
    """Count and log one refused call."""
    metrics.refused(reason=exc.reason, code=exc.code.name, cluster_id=call.cluster_id)
    events.refused(
        code=exc.code.name,
        reason=exc.reason,
        message=exc.public_message,
        caller=call.caller,
        peer=call.peer,
    )


def refusals(
    method: Callable[[S, Req, grpc.aio.ServicerContext, Call], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """`method` as a gRPC handler: its errors answered, counted and logged (module docstring)."""
    log = logging.getLogger(method.__module__)

    @functools.wraps(method)
    async def handler(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        call = Call(context.peer(), cluster_id_of(context.invocation_metadata() or ()))
        try:
            return await method(self, request, context, call)
        except CaError as exc:
            refused = _unless_out_of_descriptors(exc, exc, self.events)
        except Exception as exc:
            refused = _unless_out_of_descriptors(exc, UNEXPECTED, self.events)
            if refused is UNEXPECTED:
                log.exception("unexpected error in %s", method.__name__)
        note_refusal(self.metrics, self.events, refused, call)
        await context.abort(refused.code, refused.public_message)
        raise AssertionError("ServicerContext.abort ends the call by raising")

    return handler


def _unless_out_of_descriptors(exc: Exception, refusal: CaError, events: CaEventLog) -> CaError:
    """`NO_DESCRIPTORS` when `exc` comes from running out of descriptors, else `refusal`.
    An INTERNAL one may hide it without an errno (SQLite), so for that one the process's
    own count is looked at too."""
    probe = refusal.code == grpc.StatusCode.INTERNAL
    if isinstance(refusal, OutOfDescriptors) or out_of_descriptors(exc, probe=probe):
        events.exhaustion.noted()
        return NO_DESCRIPTORS
    return refusal
