"""Certificates for the node's workloads: keys made ahead of time, CSRs the CA gets together.

The node agent authenticates to the CA as itself (`agent.node.own`: its own token, re-read
for every call, then outside Kubernetes its own certificate) and asks for each workload's
certificate for another identity, the CA allowing it only for a node account and, with
Kubernetes, only for service accounts with a pod on the node agent's own node (without it,
only what its `--node-identity-policy` lists). CSRs asked for in the same moment (a node that
just rebooted, many pods starting) leave together in `BatchCreateCertificates` calls
(`agent.upstream.batch_client`); a CA without that call, as Istio's, gets one
`CreateCertificate` per identity with Istio's `ImpersonatedIdentity` metadata, as ztunnel
asks (docs/COMPATIBILITY.md §4). A
`KeyPool` of keys generated ahead of time means a new identity's first certificate waits for
one CA round trip, not for key generation. The channel to the CA is kept open between calls
and opened afresh after a failure or `CHANNEL_MAX_AGE`, so a replaced CA root is picked up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime

import grpc
from grpc import aio

from agent.config import AgentConfig
from agent.errors import AgentError, CaRequestFailed
from agent.metrics import AgentMetrics
from agent.node.own import Credential
from agent.state.svid import Svid, svid_from_response
from agent.upstream.batch_client import BatchIssuer, CertificateOrder, CertificateOutcome
from agent.upstream.caclient import DEFINITIVE, RETRYABLE, CaClient, RetryPolicy
from certs.csr import build_csr
from certs.keys import KeyType, PrivateKey, generate_key
from certs.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

CHANNEL_MAX_AGE_S = 300.0
ISTIO_RETRIES = RetryPolicy()
Pending = tuple[SpiffeId, bytes, "asyncio.Future[list[str]]"]  # identity, CSR, its answer


class KeyPool:
    """Up to `size` keys ready to take; taking one starts making its replacement."""

    def __init__(self, kind: KeyType, size: int) -> None:
        self._kind = kind
        self._size = size
        self._ready: list[PrivateKey] = []
        self._filling: asyncio.Task[None] | None = None

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def take(self) -> PrivateKey:
        key = self._ready.pop() if self._ready else await self._make()
        self.refill()
        return key

    def refill(self) -> None:
        """Make keys up to the pool size in the background (one task at a time)."""
        if self._filling is None and len(self._ready) < self._size:
            self._filling = asyncio.ensure_future(self._fill())
            self._filling.add_done_callback(self._filled)

    async def _fill(self) -> None:
        while len(self._ready) < self._size:
            self._ready.append(await self._make())

    def _filled(self, task: asyncio.Task[None]) -> None:
        self._filling = None
        if not task.cancelled() and task.exception() is not None:
            log.error("key pool: cannot generate a %s key: %s", self._kind.value, task.exception())

    async def _make(self) -> PrivateKey:
        if self._kind.value.startswith("rsa-"):
            return await asyncio.to_thread(generate_key, self._kind)  # 50 ms and more
        return generate_key(self._kind)

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()


class NodeIssuer:
    """`issue(spiffe_id)`: a new key from the pool, a CSR, the CA's checked answer."""

    def __init__(
        self,
        *,
        ca: CaClient,
        config: AgentConfig,
        keys: KeyPool,
        now: Callable[[], datetime],
        metrics: AgentMetrics,
        credential: Callable[[], Credential | None] = lambda: None,
        batch: BatchIssuer | None = None,
        rng: random.Random | None = None,
        retry: RetryPolicy = ISTIO_RETRIES,
    ) -> None:
        """`batch`: how CSRs reach the CA (default: `BatchCreateCertificates` against Bulwark,
        one `CreateCertificate` per identity against a CA without it, as Istio's)."""
        self._ca = ca
        self._metrics = metrics
        self._batch = batch or BatchIssuer(
            timeout=config.ca_request_timeout,
            own_identity=str(config.spiffe_id),
            max_batch=config.ca_batch_max,
        )
        self._rng = rng or random.Random()
        self._retry = retry
        self._config = config
        self._keys = keys
        self._now = now
        self._credential = credential  # the node agent's own certificate, when it has one
        self._channel: aio.Channel | None = None
        self._channel_serial = ""  # "" when the kept channel authenticates with the token
        self._opened = 0.0
        self._pending: list[Pending] = []
        self._tasks: set[asyncio.Future[None]] = set()  # sends and channel closes in flight
        self.calls = 0  # CA round trips made (each may carry several certificates)

    @property
    def ca_call(self) -> str:
        """The call workload certificates are asked for with now (shown on the status page)."""
        return "BatchCreateCertificates" if self._batch.batch_supported else "CreateCertificate"

    def warm(self) -> None:
        """Fill the key pool in the background (a first identity then waits only for the CA)."""
        self._keys.refill()

    async def issue(self, spiffe_id: SpiffeId) -> Svid:
        key = await self._keys.take()
        csr = build_csr(key, spiffe_id)
        chain = await self._sign(spiffe_id, csr)
        return svid_from_response(chain_pems=chain, key=key, expected=spiffe_id, now=self._now())

    async def _sign(self, spiffe_id: SpiffeId, csr: bytes) -> list[str]:
        """Queue the CSR; every CSR queued before the loop turns leaves in one flush."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((spiffe_id, csr, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Pending]) -> None:
        """One round trip for the whole batch; items refused for a passing reason (the CA
        unreachable, overloaded) are asked again with Istio's CSR retry waits."""
        self.calls += 1
        attempts = self._retry.max_attempts
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self._metrics.inc("num_outgoing_retries", request_type="csr")
                await asyncio.sleep(self._retry.wait(attempt - 1, self._rng))
            batch = await self._round_trip(batch, last=attempt == attempts)
            if not batch:
                return

    async def _round_trip(self, batch: list[Pending], *, last: bool) -> list[Pending]:
        """Send `batch`; settle every future the CA answered for good; return those to retry."""
        try:
            channel = self._open()
        except AgentError as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return []
        orders = [
            CertificateOrder(str(spiffe_id), csr, self._config.secret_ttl)
            for spiffe_id, csr, _ in batch
        ]
        metadata = self._ca.call_metadata(token=not self._channel_serial)
        self._metrics.inc("num_outgoing_requests", request_type="csr")
        started = time.monotonic()
        outcomes = await self._batch.issue(channel, orders, metadata)
        elapsed_ms = (time.monotonic() - started) * 1000.0
        self._metrics.inc("outgoing_latency", elapsed_ms, request_type="csr")
        codes = {outcome.code for outcome in outcomes}
        reachable = not codes & {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        self._metrics.set("ca_reachable", 1.0 if reachable else 0.0)
        if not codes <= {grpc.StatusCode.OK}:
            self._metrics.inc("num_failed_outgoing_requests", request_type="csr")
        if not reachable:
            self._discard(channel)  # a dead connection, or a CA that replaced its root
        again = []
        for item, outcome in zip(batch, outcomes, strict=True):
            future = item[2]
            if future.done():
                continue
            if outcome.ok:
                future.set_result(list(outcome.chain))
            elif outcome.code in RETRYABLE and not last:
                log.info("CSR for %s failed, retrying: %s", outcome.spiffe_id, outcome.message)
                again.append(item)
            else:
                future.set_exception(await self._refusal(outcome))
        return again

    async def _refusal(self, outcome: CertificateOutcome) -> CaRequestFailed:
        code = outcome.code
        message = f"CA {self._config.ca_addr} answered {code.name} for {outcome.spiffe_id}: "
        hint = await self._ca.explain(code, outcome.message)
        return CaRequestFailed(
            message + outcome.message + hint, code, definitive=code in DEFINITIVE
        )

    def _open(self) -> aio.Channel:
        """The kept channel, or a fresh one when there is none, it is old, or the node agent's
        own certificate changed (renewed, expiring: then the token again)."""
        credential = self._credential()
        serial = credential.serial if credential is not None else ""
        if self._channel is not None and (
            time.monotonic() - self._opened > CHANNEL_MAX_AGE_S or serial != self._channel_serial
        ):
            self._discard(self._channel)
        if self._channel is None:
            if credential is None:
                self._channel = self._ca.open_channel()
            else:
                self._channel = self._ca.open_channel(
                    client=(credential.key_pem, credential.chain_pem)
                )
            self._channel_serial = serial
            self._opened = time.monotonic()
        return self._channel

    def _discard(self, channel: aio.Channel) -> None:
        """Stop using `channel` (a failed call may mean a dead connection or a new root)."""
        if id(self._channel) != id(channel):
            return  # already replaced
        self._channel = None
        closing = asyncio.ensure_future(channel.close(grace=1.0))
        self._tasks.add(closing)
        closing.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._keys.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
