"""`istio.v1.auth.IstioCertificateService` on a `grpc.aio` server.

The servicer depends only on three small protocols, as Istio's `server.go` does:
something that authenticates a call (`CallerAuthentication`), something that
signs a CSR for a caller (`CsrSigner`) and an async issuance record
(`ca_server.record.entry.Recorder`). It authenticates (on the event loop when no I/O
is needed, else in a thread), applies impersonation rules, has the signer sign
on the loop, awaits the record's commit and only then answers. Its errors become gRPC
statuses, and are counted and logged, in `ca_server.issuance.refusals` (as the
WorkloadIdentityService's do); an issued certificate is logged and counted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from ca_server.authn.authenticators import IdentityExtractionError, workload_identity
from ca_server.errors import (
    AuthenticationError,
    CaError,
    ImpersonationRefused,
    InvalidRequest,
    Overloaded,
)
from ca_server.identity import (
    Caller,
    RequestCredentials,
    bearer_token_of,
    cluster_id_of,
    shown,
)
from ca_server.issuance.refusals import Call, refusals
from ca_server.issuance.signer import CsrParseError, Issued
from ca_server.logs import CaEventLog
from ca_server.metrics import CaMetrics
from ca_server.record.entry import Recorder
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
M = TypeVar("M", bound=Message)


class CallerAuthentication(Protocol):
    """Turns a call's credentials into a `Caller` or raises `AuthenticationError`
    (`ca_server.authn.authenticators.Authentication` tries an ordered list of authenticators)."""

    def may_block(self, creds: RequestCredentials) -> bool: ...

    def authenticate(self, creds: RequestCredentials) -> Caller: ...

    def authorize_impersonation(self, caller: Caller, namespace: str, account: str) -> None:
        """Raise `ImpersonationRefused` unless `caller` may act as `namespace/account`."""

    @property
    def impersonation_may_block(self) -> bool:
        """Whether `authorize_impersonation` may wait on I/O."""


class CsrSigner(Protocol):
    """Signs a CSR for an authenticated caller or raises a `CaError` saying why not."""

    def sign(self, *, csr_pem: str, validity_s: int, caller: Caller) -> Issued: ...


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


def add_to_server(service: CertificateService, server: grpc.aio.Server) -> None:
    """Register `service` with the never-raising request deserializer."""
    handlers = {
        "CreateCertificate": grpc.unary_unary_rpc_method_handler(
            service.CreateCertificate,
            request_deserializer=never_raising_decoder(
                ca_pb2.IstioCertificateRequest,
                "IstioCertificateRequest (bad protobuf or a csr that is not UTF-8)",
            ),
            response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


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
        signer: CsrSigner,
        recorder: Recorder | None,
        metrics: CaMetrics,
        trust_domain: TrustDomain,
        trusted_node_accounts: tuple[str, ...],
        events: CaEventLog | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        self._authn = authentication
        self._signer = signer
        self._recorder = recorder
        self.metrics = metrics
        self.events = events if events is not None else CaEventLog()
        self._trust_domain = trust_domain
        self._trusted = frozenset(trusted_node_accounts)
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    @refusals
    async def CreateCertificate(
        self,
        request: ca_pb2.IstioCertificateRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> ca_pb2.IstioCertificateResponse:
        started = time.perf_counter()
        self._in_flight += 1
        try:
            if self._max_in_flight is not None and self._in_flight > self._max_in_flight:
                raise Overloaded("the CA is at its limit of concurrent requests; retry shortly")
            chain = await self._create(request, context, call)
        finally:
            self._in_flight -= 1
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
            call.caller = caller = await self._impersonate(call.caller, request)
        except IdentityExtractionError:
            metrics.id_errors.inc()
            metrics.auth_failures.inc()
            raise
        except AuthenticationError:
            metrics.auth_failures.inc()
            raise
        issued = self._sign(request, caller)
        if self._recorder is not None:
            await self._recorder.record(issued.entry)  # a failure answers INTERNAL, sends nothing
        metrics.success.inc()
        metrics.issued_for(caller.cluster_id)
        self.events.issued(issued.entry, peer=call.peer)
        return issued.chain

    def _sign(self, request: ca_pb2.IstioCertificateRequest, caller: Caller) -> Issued:
        metrics = self.metrics
        try:
            return self._signer.sign(
                csr_pem=request.csr, validity_s=request.validity_duration, caller=caller
            )
        except CsrParseError:
            metrics.parse_errors.inc()
            metrics.sign_errors.labels(error="CSR_ERROR").inc()
            raise
        except CaError as exc:
            if exc.sign_error:
                metrics.sign_errors.labels(error=exc.sign_error).inc()
            raise

    async def _impersonate(self, caller: Caller, request: ca_pb2.IstioCertificateRequest) -> Caller:
        fields = request.metadata.fields if request.HasField("metadata") else {}
        if "ImpersonatedIdentity" not in fields:
            return caller
        target = fields["ImpersonatedIdentity"].string_value
        if f"{caller.namespace}/{caller.service_account}" not in self._trusted:
            raise ImpersonationRefused(
                f"{caller.spiffe_id} may not request certificates for another identity "
                "(not in CA_TRUSTED_NODE_ACCOUNTS)"
            )
        try:
            wanted = SpiffeId.parse(target)
        except InvalidSpiffeId as exc:
            raise ImpersonationRefused(
                f"ImpersonatedIdentity {shown(target)} is not a SPIFFE ID: {exc}"
            ) from exc
        account = wanted.service_account()
        if wanted.trust_domain != self._trust_domain or account is None:
            raise ImpersonationRefused(
                f"ImpersonatedIdentity {shown(target)} is not a workload of this trust domain"
            )
        if self._authn.impersonation_may_block:  # node-bound: asks the API server
            await asyncio.to_thread(self._authn.authorize_impersonation, caller, *account)
        else:
            self._authn.authorize_impersonation(caller, *account)
        return replace(
            caller,
            spiffe_id=workload_identity(self._trust_domain, *account),
            namespace=account[0],
            service_account=account[1],
            subject=f"{caller.subject} as {wanted}",
        )
