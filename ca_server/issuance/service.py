"""`istio.v1.auth.IstioCertificateService` on a `grpc.aio` server.

The servicer depends only on small protocols, as Istio's `server.go` does:
something that authenticates a call (`CallerAuthentication`), the impersonation rules
(`Impersonation`), something that signs a CSR for a caller (`CsrSigner`) and an async
issuance record (`ca_server.record.entry.Recorder`). It authenticates (on the event loop
when no I/O is needed, else in a thread), applies the impersonation rules, has the signer
sign on the loop, awaits the record's commit and only then answers. Its errors become gRPC
statuses, and are counted and logged, in `ca_server.issuance.refusals` (as the
WorkloadIdentityService's do); an issued certificate is logged and counted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from ca_server.authn.authenticators import IdentityExtractionError
from ca_server.errors import AuthenticationError, CaError, InvalidRequest, Overloaded
from ca_server.identity import Caller, RequestCredentials, bearer_token_of, cluster_id_of
from ca_server.issuance.refusals import Call, refusals
from ca_server.issuance.signer import CsrParseError, Issued
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import Recorder
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
M = TypeVar("M", bound=Message)


class CallerAuthentication(Protocol):
    """Turns a call's credentials into a `Caller` or raises `AuthenticationError`
    (`ca_server.authn.authenticators.Authentication` tries an ordered list of authenticators)."""

    def may_block(self, creds: RequestCredentials) -> bool: ...

    def authenticate(self, creds: RequestCredentials) -> Caller: ...


class Impersonation(Protocol):
    """Which identity a certificate names when the caller asks for another one
    (`ca_server.authn.impersonation.ImpersonationRules`); never waits on I/O."""

    def identity_for(self, caller: Caller, requested: str, *, field: str) -> Caller:
        """`caller` acting as `requested`, or `ImpersonationRefused` (UpstreamUnavailable)."""
        ...


class CsrSigning(Protocol):
    """Signs a CSR for an authenticated caller or raises a `CaError` saying why not."""

    def sign(self, *, csr_pem: str, validity_s: int, caller: Caller) -> Issued: ...


class CsrSigner(CsrSigning, Protocol):
    """`CsrSigning`, and sessions that sign several CSRs under one reading of the CA material
    and the clock (`ca_server.issuance.signer.Signer`)."""

    def session(self) -> CsrSigning: ...


class InFlight:
    """Certificates being worked on in one worker, against --max-concurrent-rpcs; shared by
    CreateCertificate and BatchCreateCertificates (a batch counts each of its items)."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self.count = 0

    def enter(self, certificates: int = 1) -> None:
        """Count `certificates` in, or raise `Overloaded` (counting nothing) beyond the limit."""
        if self._limit is not None and self.count + certificates > self._limit:
            raise Overloaded("the CA is at its limit of concurrent requests; retry shortly")
        self.count += certificates

    def leave(self, certificates: int = 1) -> None:
        self.count -= certificates


def sign_counted(
    signer: CsrSigning, metrics: CaMetrics, *, csr_pem: str, validity_s: int, caller: Caller
) -> Issued:
    """`signer.sign(...)`, its failures counted in Istio's sign-error series."""
    try:
        return signer.sign(csr_pem=csr_pem, validity_s=validity_s, caller=caller)
    except CsrParseError:
        metrics.parse_errors.inc()
        metrics.sign_errors.labels(error="CSR_ERROR").inc()
        raise
    except CaError as exc:
        if exc.sign_error:
            metrics.sign_errors.labels(error=exc.sign_error).inc()
        raise


class UndecodableRequest(InvalidRequest):
    """What a request deserializer hands the servicer for bytes that are no request;
    the servicer raises it (INVALID_ARGUMENT)."""


def never_raising_decoder(message: type[M], what: str) -> Callable[[bytes], M | UndecodableRequest]:
    """A request deserializer that never raises (grpc would answer UNKNOWN and log a traceback)."""

    def decode(data: bytes) -> M | UndecodableRequest:
        try:
            return message.FromString(data)
        except DecodeError:
            # upb says "Error parsing message" for bad wire data and for a non-UTF-8 string
            return UndecodableRequest(f"request is not a valid {what}")

    return decode


def unary_handler(
    behaviour: Callable[..., Any], request: type[M], response: type[Message], what: str
) -> grpc.RpcMethodHandler:
    """A unary-unary handler for `behaviour` whose request deserializer never raises."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=never_raising_decoder(request, what),
        response_serializer=response.SerializeToString,
    )


def register(
    server: grpc.aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler]
) -> None:
    """Serve `handlers` (method name -> handler) as `service` on `server`."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def add_to_server(service: CertificateService, server: grpc.aio.Server) -> None:
    """Register `service` with the never-raising request deserializer."""
    create = unary_handler(
        service.CreateCertificate,
        ca_pb2.IstioCertificateRequest,
        ca_pb2.IstioCertificateResponse,
        "IstioCertificateRequest (bad protobuf or a csr that is not UTF-8)",
    )
    register(server, SERVICE_NAME, {"CreateCertificate": create})


async def authenticate_call(
    authn: CallerAuthentication, context: grpc.aio.ServicerContext, peer: str | None = None
) -> Caller:
    """The caller of a call: on the event loop when no I/O is needed, else in a thread."""
    creds = credentials_of(context, peer)
    if authn.may_block(creds):
        return await asyncio.to_thread(authn.authenticate, creds)
    return authn.authenticate(creds)


def credentials_of(
    context: grpc.aio.ServicerContext, peer: str | None = None
) -> RequestCredentials:
    """Bearer token, verified-or-not client certificate, `clusterid` header and peer of a call
    (`peer`: the call's peer when the caller has it already)."""
    metadata = context.invocation_metadata() or ()
    token = bearer_token_of(metadata)  # one header, or AuthenticationError
    cluster_id = cluster_id_of(metadata)
    client_pem: bytes | None = None
    auth = context.auth_context()
    if auth.get("x509_pem_cert"):
        # The verified leaf first, then whatever chain the peer sent (in any order).
        client_pem = auth["x509_pem_cert"][0] + b"".join(auth.get("x509_pem_cert_chain", []))
    return RequestCredentials(
        bearer_token=token,
        client_cert_pem=client_pem,
        cluster_id=cluster_id,
        peer=context.peer() if peer is None else peer,
    )


class CertificateService(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(
        self,
        *,
        authentication: CallerAuthentication,
        impersonation: Impersonation,
        signer: CsrSigner,
        recorder: Recorder | None,
        metrics: CaMetrics,
        events: CaEventLog | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self._authn = authentication
        self._impersonation = impersonation
        self._signer = signer
        self._recorder = recorder
        self.metrics = metrics
        self.events = events if events is not None else CaEventLog()
        self._in_flight = in_flight if in_flight is not None else InFlight(None)

    @refusals
    async def CreateCertificate(
        self,
        request: ca_pb2.IstioCertificateRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> ca_pb2.IstioCertificateResponse:
        started = time.perf_counter()
        try:
            self._in_flight.enter()
            try:
                chain = await self._create(request, context, call)
            finally:
                self._in_flight.leave()
        finally:
            self.metrics.call_duration.observe(time.perf_counter() - started)
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    async def _create(
        self,
        request: ca_pb2.IstioCertificateRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> list[str]:
        metrics = self.metrics
        metrics.csr_count.inc()
        if isinstance(request, UndecodableRequest):
            raise request
        try:
            call.caller = await authenticate_call(self._authn, context, call.peer)
            call.caller = caller = self._impersonate(call.caller, request)
        except IdentityExtractionError:
            metrics.id_errors.inc()
            metrics.auth_failures.inc()
            raise
        except AuthenticationError:
            metrics.auth_failures.inc()
            raise
        issued = sign_counted(
            self._signer,
            metrics,
            csr_pem=request.csr,
            validity_s=request.validity_duration,
            caller=caller,
        )
        if self._recorder is not None:
            # A failure answers INTERNAL and sends nothing; so does a caller's deadline passing.
            await self._recorder.record(issued.entry, within=context.time_remaining())
        metrics.success.inc()
        metrics.issued_for(caller.cluster_id)
        self.events.issued(issued.entry, peer=call.peer)
        return issued.chain

    def _impersonate(self, caller: Caller, request: ca_pb2.IstioCertificateRequest) -> Caller:
        fields = request.metadata.fields if request.HasField("metadata") else {}
        if "ImpersonatedIdentity" not in fields:
            return caller
        return self._impersonation.identity_for(
            caller, fields["ImpersonatedIdentity"].string_value, field="ImpersonatedIdentity"
        )
