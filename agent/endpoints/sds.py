"""Envoy's SecretDiscoveryService: StreamSecrets, DeltaSecrets and FetchSecrets (docs/COMPATIBILITY.md §2).

Stream rules: the first request carries `node.id`; a request with
`error_detail` is a NACK (logged, counted, not answered); a nonce other than
the last one sent is stale and ignored; an ACK gets no reply; newly named
resources are answered with only those names. A resource that does not exist
yet (CA unreachable) is not an error: the stream stays open and the secret is
pushed as soon as it exists, and every later version is pushed too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from agent.endpoints.grpc_util import (
    abort_with,
    lookup_state,
    pump_requests,
    require_decoded,
    tolerant,
)
from agent.endpoints.resources import AGENT_NAMES, SECRET_TYPE_URL, ResourceNames
from agent.errors import AgentError, SecretUnavailable, TooManyResources
from agent.files.secrets import MAX_FILE_RESOURCES_PER_STREAM, FileSecrets
from agent.logs import LogBudget, printable
from agent.metrics import AgentMetrics
from agent.state.cache import SecretCache, Snapshot

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.state.identity import IdentityState, StateLookup

log = logging.getLogger(__name__)

SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
MAX_QUEUED_REQUESTS = 16


def _nonce() -> str:
    """128 random bits in hex, like uuid4().hex without importing uuid (and with it platform)."""
    return os.urandom(16).hex()


class StreamError(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class _Watch:
    """What one stream watches and which version of each resource it last sent."""

    def __init__(
        self,
        files: FileSecrets,
        metrics: AgentMetrics,
        budget: LogBudget,
        names: ResourceNames = AGENT_NAMES,
    ) -> None:
        self.files = files
        self.policy = names
        self.metrics = metrics
        self.budget = budget
        self.node_id = ""
        self.names: dict[str, None] = {}  # ordered set
        self.sent: dict[str, str] = {}
        self.held: set[str] = set()  # file resources this stream holds a watch on

    def first(self, node_id: str, type_url: str) -> None:
        if not self.node_id:
            if not node_id:
                raise StreamError("the first request on a stream must carry node.id")
            self.node_id = printable(node_id)
        if type_url and type_url != SECRET_TYPE_URL:
            raise StreamError(f"type_url {type_url!r} is not served here; use {SECRET_TYPE_URL}")

    def nack(self, kind: str, error_message: str) -> None:
        self.metrics.inc("sds_nack_count")
        dropped = self.budget.take()
        if dropped is None:
            return
        log.warning(
            "SDS %s NACK from node %s for %s: %s%s",
            kind,
            self.node_id,
            printable(",".join(self.names) or "-"),
            printable(error_message),
            f" ({dropped} similar lines dropped)" if dropped else "",
        )

    async def subscribe(self, names: Sequence[str]) -> list[str]:
        """Start watching `names`; returns those that are new to this stream."""
        new = [n for n in dict.fromkeys(names) if n not in self.names]
        files = [n for n in new if self.policy.check(n)]  # all checked before any is watched
        if len(self.held) + len(files) > MAX_FILE_RESOURCES_PER_STREAM:
            raise TooManyResources(
                f"one stream may watch at most {MAX_FILE_RESOURCES_PER_STREAM} file resources"
            )
        for name in files:
            self.files.hold(name)
            self.held.add(name)  # before any wait: a cancelled stream still releases it
        for name in files:
            await self.files.loaded(name)
        self.names.update(dict.fromkeys(new))
        return new

    def unsubscribe(self, names: Sequence[str]) -> None:
        for name in names:
            self.names.pop(name, None)
            self.sent.pop(name, None)
            if name in self.held:
                self.held.discard(name)
                self.files.release(name)

    def release_all(self) -> None:
        """The stream ended: give back every file watch it held."""
        for name in list(self.held):
            self.files.release(name)
        self.held.clear()

    def due(self, snapshot: Snapshot, names: Sequence[str] | None = None) -> list[str]:
        """Watched names (or just `names`) that exist and differ from what was sent."""
        pending = self.names if names is None else names
        out = []
        for name in pending:
            version = self.policy.version(snapshot, name)
            if version is not None and version != self.sent.get(name):
                out.append(name)
        return out

    def resources(
        self, snapshot: Snapshot, names: Sequence[str]
    ) -> list[tuple[str, str, any_pb2.Any]]:
        out = []
        for name in names:
            secret = self.policy.secret(snapshot, name)
            version = self.policy.version(snapshot, name)
            if secret is None or version is None:
                continue
            packed = any_pb2.Any()
            packed.Pack(secret)
            out.append((name, version, packed))
            self.sent[name] = version
            self.metrics.inc("sds_push_count", resource_name=name)
        return out


class _SotwStream(_Watch):
    last_nonce = ""

    async def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[str]:
        """Apply one request; returns the names to answer now (often none)."""
        require_decoded(request)
        self.first(request.node.id, request.type_url)
        if request.response_nonce and request.response_nonce != self.last_nonce:
            log.debug(
                "SDS stale nonce %s from %s ignored",
                printable(request.response_nonce),
                self.node_id,
            )
            return []
        if request.HasField("error_detail"):
            self.nack("stream", request.error_detail.message)
            return []
        names = list(request.resource_names)
        self.unsubscribe([n for n in self.names if n not in names])
        return await self.subscribe(names)

    def response(
        self, snapshot: Snapshot, names: Sequence[str]
    ) -> discovery_pb2.DiscoveryResponse | None:
        found = self.resources(snapshot, names)
        if not found:
            return None
        self.last_nonce = _nonce()
        return discovery_pb2.DiscoveryResponse(
            version_info=str(snapshot.generation),
            resources=[packed for _, _, packed in found],
            type_url=SECRET_TYPE_URL,
            nonce=self.last_nonce,
        )


class _DeltaStream(_Watch):
    async def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[str]:
        require_decoded(request)
        first = not self.node_id
        self.first(request.node.id, request.type_url)
        if first:
            self.sent.update(request.initial_resource_versions)
        if request.HasField("error_detail"):
            self.nack("delta", request.error_detail.message)
            return []
        self.unsubscribe(list(request.resource_names_unsubscribe))
        return await self.subscribe(list(request.resource_names_subscribe))

    def response(
        self, snapshot: Snapshot, names: Sequence[str]
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        found = self.resources(snapshot, names)
        if not found:
            return None
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(snapshot.generation),
            resources=[
                discovery_pb2.Resource(name=name, version=version, resource=packed)
                for name, version, packed in found
            ],
            type_url=SECRET_TYPE_URL,
            nonce=_nonce(),
        )


class SdsService(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the secrets of the caller's identity (`states`) to Envoy."""

    def __init__(
        self,
        *,
        states: StateLookup,
        files: FileSecrets,
        metrics: AgentMetrics,
        names: Callable[[IdentityState], ResourceNames] | None = None,
        fetch_wait: float = 0.0,
    ) -> None:
        self._states = states
        self._files = files
        self._metrics = metrics
        self._names = names  # None: the per-pod agent's names for every caller
        # How long FetchSecrets waits for a secret still being fetched (a node agent's
        # identity that a caller's first call created); 0: answer at once.
        self._fetch_wait = fetch_wait
        self._nack_budget = LogBudget()

    def _policy(self, state: IdentityState) -> ResourceNames:
        return AGENT_NAMES if self._names is None else self._names(state)

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        state = await lookup_state(self._states, context)
        stream = _SotwStream(self._files, self._metrics, self._nack_budget, self._policy(state))
        async for response in self._serve(stream, state, request_iterator, context):
            yield response

    async def DeltaSecrets(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        state = await lookup_state(self._states, context)
        stream = _DeltaStream(self._files, self._metrics, self._nack_budget, self._policy(state))
        async for response in self._serve(stream, state, request_iterator, context):
            yield response

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> discovery_pb2.DiscoveryResponse:
        state = await lookup_state(self._states, context)
        cache = state.cache
        watch = _SotwStream(self._files, self._metrics, self._nack_budget, self._policy(state))
        try:
            require_decoded(request)
            if request.type_url and request.type_url != SECRET_TYPE_URL:
                raise StreamError(f"type_url {request.type_url!r} is not served here")
            if not request.resource_names:
                raise StreamError("FetchSecrets needs at least one resource name")
            names = await watch.subscribe(list(request.resource_names))
            snapshot = await self._settled(cache, names, watch.policy)
            missing = [n for n in names if watch.policy.version(snapshot, n) is None]
            if missing:
                reasons = [snapshot.file_errors.get(n) or snapshot.svid_error for n in missing]
                reason = "; ".join(dict.fromkeys(r for r in reasons if r)) or "not loaded yet"
                shown = ", ".join(printable(n) for n in missing)
                raise SecretUnavailable(f"no secret {shown} yet: {reason}")
            response = watch.response(snapshot, names)
            assert response is not None
            return response
        except AgentError as exc:
            await abort_with(context, exc)
            raise AssertionError("abort_with always raises") from None
        finally:
            watch.release_all()  # a one-shot fetch holds no watch afterwards

    async def _settled(
        self, cache: SecretCache, names: Sequence[str], policy: ResourceNames
    ) -> Snapshot:
        """The snapshot once every name exists, an error is known, or `fetch_wait` passed."""
        snapshot = cache.snapshot
        if self._fetch_wait <= 0:
            return snapshot
        box = cache.subscribe()
        try:
            async with asyncio.timeout(self._fetch_wait):
                while not all(policy.version(snapshot, n) for n in names):
                    if snapshot.svid_error or (latest := await box.get()) is None:
                        break
                    snapshot = latest
        except TimeoutError:
            pass
        finally:
            cache.unsubscribe(box)
        return cache.snapshot

    async def _serve(
        self,
        stream: _SotwStream | _DeltaStream,
        state: IdentityState,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Any]:
        cache = state.cache
        requests: asyncio.Queue[Any] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        pump = asyncio.ensure_future(pump_requests(request_iterator, requests))
        box = cache.subscribe()
        next_request: asyncio.Future[Any] | None = None
        next_snapshot: asyncio.Future[Snapshot | None] | None = None
        try:
            while True:
                next_request = next_request or asyncio.ensure_future(requests.get())
                next_snapshot = next_snapshot or asyncio.ensure_future(box.get())
                await asyncio.wait(
                    {next_request, next_snapshot}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_request.done():
                    request, next_request = next_request.result(), None
                    if request is None:
                        return  # the client closed its side
                    try:
                        names = await stream.on_request(request)
                    except AgentError as exc:
                        await abort_with(context, exc)
                    snapshot_now = cache.snapshot
                    reply = stream.response(snapshot_now, stream.due(snapshot_now, names))
                    if reply is not None:
                        yield reply
                if next_snapshot.done():
                    snapshot, next_snapshot = next_snapshot.result(), None
                    if snapshot is None:
                        return  # agent shutting down: end the stream with OK
                    if stream.node_id:
                        push = stream.response(snapshot, stream.due(snapshot))
                        if push is not None:
                            yield push
        finally:
            cache.unsubscribe(box)
            stream.release_all()
            for future in (pump, next_request, next_snapshot):
                if future is not None:
                    future.cancel()


def add_sds_to_server(service: SdsService, server: grpc.aio.Server) -> None:
    """Register SDS with deserializers that turn garbage into INVALID_ARGUMENT, not a traceback."""
    request, delta = discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest
    handlers = {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(
            service.StreamSecrets,
            request_deserializer=tolerant(request),
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        ),
        "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
            service.DeltaSecrets,
            request_deserializer=tolerant(delta),
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        ),
        "FetchSecrets": grpc.unary_unary_rpc_method_handler(
            service.FetchSecrets,
            request_deserializer=tolerant(request),
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SDS_SERVICE, handlers),))
