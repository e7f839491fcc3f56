"""Certificates for many identities at once, from Bulwark's CA or from a stock Istio CA.

A node agent holds one CSR per workload identity it serves. Against Bulwark it sends them in
`bulwark.v1.CertificateService/BatchCreateCertificates` calls of at most `max_batch` items;
a CA that answers UNIMPLEMENTED (Istio's istiod) gets one `CreateCertificate` per identity
instead, with Istio's `ImpersonatedIdentity` metadata, as ztunnel asks istiod. Either way the
answer is one `CertificateOutcome` per order, in order: a chain, or the status that refused
it. Retrying is the caller's business; this module never logs a token.

Use (the node agent's side)::

    issuer = BatchIssuer(timeout=timedelta(seconds=10), own_identity=node_spiffe_id)
    orders = [CertificateOrder(spiffe_id, csr_pem, ttl) for each identity to (re)issue]
    outcomes = await issuer.issue(channel, orders, metadata)
    for order, outcome in zip(orders, outcomes):
        if outcome.ok: install outcome.chain (leaf first, root last)
        else: retry later; outcome.code / outcome.message say why (per item)

- `BatchIssuer` is long-lived: keep one per upstream CA. It remembers that a CA lacks the
  batch call and asks it again after `reprobe_after` (a CA upgraded in place gains it).
- `channel` is an open `grpc.aio` channel to the CA (TLS with the CA's root, or mTLS with
  the node agent's own certificate); `metadata` is what authenticates the node agent itself,
  e.g. `(("authorization", "Bearer " + its own service-account token),)`. The CA binds each
  impersonated identity to that caller: with Kubernetes, to pods of the caller's node; without,
  to the patterns `--node-identity-policy` lists for it. An item it may not mint comes back
  refused on its own (PERMISSION_DENIED / UNAUTHENTICATED) while the others succeed.
- `CertificateOrder.spiffe_id` is the identity to mint; "" or `own_identity` means the
  caller's own certificate (no impersonation). `ttl` becomes the requested validity.
- `max_batch` should not exceed the CA's `--batch-max-certificates` (default 64, the same as
  `DEFAULT_MAX_BATCH`); a larger request is refused whole with INVALID_ARGUMENT.
- `issue()` never raises for a refused call or item: a transport error or a refused call
  gives that status to every order of its chunk. A successful outcome's leaf is checked to
  name the identity ordered (else INTERNAL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
from grpc import aio

from certs.errors import CertsError
from certs.pem import load_certificates
from certs.verify import spiffe_id_of
from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

Metadata = Sequence[tuple[str, str]]
DEFAULT_MAX_BATCH = 64  # the CA's default --batch-max-certificates
DEFAULT_FALLBACK_CONCURRENCY = 8
# How long a CA that lacked the batch call is asked one identity at a time before trying again.
DEFAULT_REPROBE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class CertificateOrder:
    """One certificate to ask for: the identity (empty: the caller's own), CSR, lifetime."""

    spiffe_id: str
    csr_pem: bytes
    ttl: timedelta

    @property
    def validity_s(self) -> int:
        return max(1, int(self.ttl.total_seconds()))


@dataclass(frozen=True, slots=True)
class CertificateOutcome:
    """The CA's answer to one order: `chain` (leaf first, root last) when `code` is OK."""

    spiffe_id: str
    code: grpc.StatusCode
    message: str = ""
    chain: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.code == grpc.StatusCode.OK)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class BatchIssuer:
    """Asks a CA for many certificates; remembers whether it has the batch call."""

    def __init__(
        self,
        *,
        timeout: timedelta,
        own_identity: str = "",
        max_batch: int = DEFAULT_MAX_BATCH,
        fallback_concurrency: int = DEFAULT_FALLBACK_CONCURRENCY,
        reprobe_after: timedelta = DEFAULT_REPROBE_AFTER,
        clock: Callable[[], float] = time.monotonic,
        use_batch: bool = True,
    ) -> None:
        """`own_identity`: the caller's SPIFFE ID; orders for it (or for "") carry no
        `ImpersonatedIdentity` on the fallback path, which a CA without a node authorizer
        refuses even for the caller itself. `use_batch=False`: one CreateCertificate per
        order from the start (a CA known to lack the batch call)."""
        if max_batch < 1 or fallback_concurrency < 1:
            raise ValueError("max_batch and fallback_concurrency must be at least 1")
        self._timeout = timeout.total_seconds()
        self._own = own_identity
        self._max_batch = max_batch
        self._concurrency = fallback_concurrency
        self._reprobe_after = reprobe_after.total_seconds()
        self._clock = clock
        self._use_batch = use_batch
        self._unsupported_since: float | None = None

    @property
    def batch_supported(self) -> bool:
        """False once the CA answered UNIMPLEMENTED, until the next probe is due."""
        return self._unsupported_since is None

    async def issue(
        self, channel: aio.Channel, orders: Sequence[CertificateOrder], metadata: Metadata
    ) -> list[CertificateOutcome]:
        """One outcome per order, in order; never raises for a refused call or item."""
        outcomes: list[CertificateOutcome] = []
        for start in range(0, len(orders), self._max_batch):
            chunk = orders[start : start + self._max_batch]
            if self._batch_due():
                answered = await self._batch(channel, chunk, metadata)
                if answered is not None:
                    outcomes.extend(answered)
                    continue
            outcomes.extend(await self._one_by_one(channel, chunk, metadata))
        return outcomes

    def _batch_due(self) -> bool:
        if not self._use_batch:
            return False
        since = self._unsupported_since
        if since is not None and self._clock() - since >= self._reprobe_after:
            self._unsupported_since = None
        return self._unsupported_since is None

    async def _batch(
        self, channel: aio.Channel, chunk: Sequence[CertificateOrder], metadata: Metadata
    ) -> list[CertificateOutcome] | None:
        """The chunk's outcomes by one batch call; None when the CA has no batch call."""
        stub = identity_pb2_grpc.CertificateServiceStub(channel)
        request = identity_pb2.BatchCreateCertificatesRequest(
            params=[
                identity_pb2.CertificateParams(
                    csr=order.csr_pem.decode(),
                    spiffe_id=order.spiffe_id,
                    validity_duration=order.validity_s,
                )
                for order in chunk
            ]
        )
        try:
            response = await stub.BatchCreateCertificates(
                request, metadata=tuple(metadata), timeout=self._timeout
            )
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unsupported_since = self._clock()
                return None
            return [CertificateOutcome(o.spiffe_id, exc.code(), exc.details() or "") for o in chunk]
        results = list(response.results)
        if len(results) != len(chunk):
            message = f"the CA answered {len(results)} results for {len(chunk)} requests"
            return [
                CertificateOutcome(o.spiffe_id, grpc.StatusCode.INTERNAL, message) for o in chunk
            ]
        return [self._outcome(order, result) for order, result in zip(chunk, results, strict=True)]

    def _outcome(
        self, order: CertificateOrder, result: identity_pb2.CertificateResult
    ) -> CertificateOutcome:
        code = _CODES.get(result.status.code, grpc.StatusCode.UNKNOWN)
        if code != grpc.StatusCode.OK:
            return CertificateOutcome(order.spiffe_id, code, result.status.message)
        return self._checked(order, list(result.cert_chain))

    async def _one_by_one(
        self, channel: aio.Channel, chunk: Sequence[CertificateOrder], metadata: Metadata
    ) -> list[CertificateOutcome]:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        slots = asyncio.Semaphore(self._concurrency)

        async def one(order: CertificateOrder) -> CertificateOutcome:
            request = ca_pb2.IstioCertificateRequest(
                csr=order.csr_pem.decode(), validity_duration=order.validity_s
            )
            if order.spiffe_id and order.spiffe_id != self._own:
                request.metadata.update({"ImpersonatedIdentity": order.spiffe_id})
            async with slots:
                try:
                    response = await stub.CreateCertificate(
                        request, metadata=tuple(metadata), timeout=self._timeout
                    )
                except aio.AioRpcError as exc:
                    return CertificateOutcome(order.spiffe_id, exc.code(), exc.details() or "")
            return self._checked(order, list(response.cert_chain))

        return list(await asyncio.gather(*(one(order) for order in chunk)))

    def _checked(self, order: CertificateOrder, chain: list[str]) -> CertificateOutcome:
        """A success, unless the chain is short or its leaf names another identity."""
        wanted = order.spiffe_id or self._own
        if len(chain) < 2:
            problem = f"the CA returned {len(chain)} certificates (leaf and root expected)"
        else:
            try:
                named = str(spiffe_id_of(load_certificates(chain[0])[0]))
            except CertsError as exc:
                named, problem = "", f"the CA returned an unusable leaf: {exc}"
            else:
                problem = "" if not wanted or named == wanted else f"the leaf names {named}"
        if problem:
            return CertificateOutcome(order.spiffe_id, grpc.StatusCode.INTERNAL, problem)
        return CertificateOutcome(order.spiffe_id, grpc.StatusCode.OK, chain=tuple(chain))
