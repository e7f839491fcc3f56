"""`bulwark.v1.CertificateService/BatchCreateCertificates`: many X.509-SVIDs in one call.

A node agent asks for every workload identity it serves at once (SPIRE's
`BatchNewX509SVID` is the model). The call is authenticated once, exactly as
CreateCertificate (bearer token or client certificate, `clusterid`); a call that fails
that, holds no item or more than `max_items`, or does not decode is refused as a whole by
`@refusals`. Otherwise every item is answered on its own: authorised by the same
impersonation rules as `ImpersonatedIdentity` (its own identity needs no right), signed,
counted and, when refused, logged as CreateCertificate's refusal would be. The signed
items go to the issuance record in one commit (`Recorder.record_many`); an item whose
entry was not committed is answered INTERNAL and its certificate is never sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import grpc

from ca_server.authn.authenticators import IdentityExtractionError
from ca_server.errors import AuthenticationError, CaError, InvalidRequest
from ca_server.identity import Caller
from ca_server.issuance.refusals import UNEXPECTED, Call, note_refusal, refusals
from ca_server.issuance.service import (
    CallerAuthentication,
    CsrSigner,
    CsrSigning,
    Impersonation,
    InFlight,
    UndecodableRequest,
    authenticate_call,
    register,
    sign_counted,
    unary_handler,
)
from ca_server.issuance.signer import Issued
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import Recorder
from protos.bulwark.v1 import identity_pb2

SERVICE_NAME = "bulwark.v1.CertificateService"
DEFAULT_MAX_ITEMS = 64
# Items signed between two yields to the event loop, so other calls are not starved.
ITEMS_PER_SLICE = 16
OK = grpc.StatusCode.OK.value[0]
_ISSUED = identity_pb2.ItemStatus(code=OK)

log = logging.getLogger(__name__)


class BatchCertificateService:
    """BatchCreateCertificates over the worker's authentication, rules, signer and record."""

    def __init__(
        self,
        *,
        authentication: CallerAuthentication,
        impersonation: Impersonation,
        signer: CsrSigner,
        recorder: Recorder | None,
        metrics: CaMetrics,
        events: CaEventLog,
        max_items: int = DEFAULT_MAX_ITEMS,
        in_flight: InFlight | None = None,
    ) -> None:
        self._authn = authentication
        self._impersonation = impersonation
        self._signer = signer
        self._recorder = recorder
        self.metrics = metrics
        self.events = events
        self._max_items = max_items
        self._in_flight = in_flight if in_flight is not None else InFlight(None)

    @refusals
    async def BatchCreateCertificates(
        self,
        request: identity_pb2.BatchCreateCertificatesRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> identity_pb2.BatchCreateCertificatesResponse:
        if isinstance(request, UndecodableRequest):
            raise request
        items = request.params
        count = len(items)
        self.metrics.csr_count.inc(count)
        self.metrics.batch_size.observe(count)
        if not 1 <= count <= self._max_items:
            raise InvalidRequest(
                f"a batch holds 1 to {self._max_items} certificate requests; this one has {count}"
            )
        started = time.perf_counter()
        self._in_flight.enter(count)
        try:
            call.caller = await self._authenticate(context, call)
            results = await self._issue(items, call.caller, call, within=context.time_remaining())
        finally:
            self._in_flight.leave(count)
            self.metrics.batch_duration.observe(time.perf_counter() - started)
        return identity_pb2.BatchCreateCertificatesResponse(results=results)

    async def _authenticate(self, context: grpc.aio.ServicerContext, call: Call) -> Caller:
        try:
            return await authenticate_call(self._authn, context, call.peer)
        except IdentityExtractionError:
            self.metrics.id_errors.inc()
            self.metrics.auth_failures.inc()
            raise
        except AuthenticationError:
            self.metrics.auth_failures.inc()
            raise

    async def _issue(
        self,
        items: Sequence[identity_pb2.CertificateParams],
        caller: Caller,
        call: Call,
        *,
        within: float | None,
    ) -> list[identity_pb2.CertificateResult]:
        """`within`: seconds the caller still waits (its gRPC deadline), if it has one."""
        results: list[identity_pb2.CertificateResult | None] = [None] * len(items)
        signed: list[tuple[int, Issued]] = []
        session = self._signer.session()  # one material, one clock reading, one template
        for i, item in enumerate(items):
            if i and i % ITEMS_PER_SLICE == 0:
                await asyncio.sleep(0)
            try:
                signed.append((i, self._sign(session, item, caller)))
            except Exception as exc:  # one item's failure, whatever it is, is that item's only
                results[i] = self._refused(exc, call)
        errors = await self._record([issued for _, issued in signed], within)
        issued_count = 0
        for (i, issued), error in zip(signed, errors, strict=True):
            if error is not None:
                results[i] = self._refused(error, call)
                continue
            issued_count += 1
            self.events.issued(issued.entry, peer=call.peer)
            results[i] = identity_pb2.CertificateResult(
                status=_ISSUED, cert_chain=issued.chain, spiffe_id=issued.entry.spiffe_id
            )
        if issued_count:
            self.metrics.success.inc(issued_count)
            self.metrics.issued_for(caller.cluster_id, issued_count)
        return [result for result in results if result is not None]

    def _sign(
        self, session: CsrSigning, item: identity_pb2.CertificateParams, caller: Caller
    ) -> Issued:
        if item.spiffe_id:
            try:
                caller = self._impersonation.identity_for(caller, item.spiffe_id, field="spiffe_id")
            except AuthenticationError:
                self.metrics.auth_failures.inc()
                raise
        return sign_counted(
            session,
            self.metrics,
            csr_pem=item.csr,
            validity_s=item.validity_duration,
            caller=caller,
        )

    async def _record(self, signed: list[Issued], within: float | None) -> list[CaError | None]:
        """Per signed item, None once its entry is committed, else why it was not."""
        if not signed or self._recorder is None:
            return [None] * len(signed)
        try:
            return list(
                await self._recorder.record_many([issued.entry for issued in signed], within=within)
            )
        except CaError as exc:
            return [exc] * len(signed)

    def _refused(self, exc: Exception, call: Call) -> identity_pb2.CertificateResult:
        """One item's refusal: counted and logged as a refused call, answered in its status."""
        if not isinstance(exc, CaError):
            log.error("unexpected error in a batch item", exc_info=exc)
            exc = UNEXPECTED
        note_refusal(self.metrics, self.events, exc, call)
        return identity_pb2.CertificateResult(
            status=identity_pb2.ItemStatus(code=exc.code.value[0], message=exc.public_message)
        )


def add_to_server(service: BatchCertificateService, server: grpc.aio.Server) -> None:
    """Register `service` with the never-raising request deserializer."""
    batch = unary_handler(
        service.BatchCreateCertificates,
        identity_pb2.BatchCreateCertificatesRequest,
        identity_pb2.BatchCreateCertificatesResponse,
        "BatchCreateCertificatesRequest (bad protobuf or a csr that is not UTF-8)",
    )
    register(server, SERVICE_NAME, {"BatchCreateCertificates": batch})
