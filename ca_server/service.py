"""`istio.v1.auth.IstioCertificateService` on a synchronous grpcio server.

The servicer authenticates, applies impersonation rules and hands the CSR to
the `Signer`. `ErrorInterceptor` is the one place where `CaError`s become gRPC
statuses and where unexpected exceptions become a generic INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc

from ca_server.authn import Authentication, IdentityExtractionError, workload_identity
from ca_server.errors import AuthenticationError, CaError, ImpersonationRefused
from ca_server.identity import Caller, RequestCredentials
from ca_server.metrics import CaMetrics
from ca_server.signer import CsrParseError, Signer
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

log = logging.getLogger(__name__)


def credentials_of(context: grpc.ServicerContext) -> RequestCredentials:
    """Bearer token, verified-or-not client certificate, `clusterid` header and peer of a call."""
    token: str | None = None
    cluster_id = ""
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str):
            scheme, _, rest = value.partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                token = rest.strip()
        elif key == "clusterid" and isinstance(value, str):
            cluster_id = value
    client_pem: bytes | None = None
    auth = context.auth_context()
    if auth.get("x509_pem_cert"):
        # The verified leaf first, then whatever chain the peer sent (in any order).
        client_pem = auth["x509_pem_cert"][0] + b"".join(auth.get("x509_pem_cert_chain", []))
    return RequestCredentials(
        bearer_token=token, client_cert_pem=client_pem, cluster_id=cluster_id, peer=context.peer()
    )


class CertificateService(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(
        self,
        *,
        authentication: Authentication,
        signer: Signer,
        metrics: CaMetrics,
        trust_domain: TrustDomain,
        trusted_node_accounts: tuple[str, ...],
    ) -> None:
        self._authn = authentication
        self._signer = signer
        self._metrics = metrics
        self._trust_domain = trust_domain
        self._trusted = frozenset(trusted_node_accounts)

    def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        self._metrics.csr_count.inc()
        try:
            caller = self._authn.authenticate(credentials_of(context))
            caller = self._impersonate(caller, request)
        except IdentityExtractionError:
            self._metrics.id_errors.inc()
            self._metrics.auth_failures.inc()
            raise
        except AuthenticationError:
            self._metrics.auth_failures.inc()
            raise
        try:
            chain = self._signer.issue(
                csr_pem=request.csr, validity_s=request.validity_duration, caller=caller
            )
        except CsrParseError:
            self._metrics.parse_errors.inc()
            self._metrics.sign_errors.labels(error="CSR_ERROR").inc()
            raise
        except CaError as exc:
            if exc.sign_error:
                self._metrics.sign_errors.labels(error=exc.sign_error).inc()
            raise
        self._metrics.success.inc()
        # DEBUG, not INFO: the issuance record holds every certificate, and a log line per
        # certificate is a locked write on the hot path.
        log.debug(
            "issued certificate for %s (authenticator %s, peer %s)",
            caller.spiffe_id,
            caller.authenticator,
            caller.peer,
        )
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    def _impersonate(self, caller: Caller, request: ca_pb2.IstioCertificateRequest) -> Caller:
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
                f"ImpersonatedIdentity {target!r} is not a SPIFFE ID: {exc}"
            ) from exc
        account = wanted.service_account()
        if wanted.trust_domain != self._trust_domain or account is None:
            raise ImpersonationRefused(
                f"ImpersonatedIdentity {target} is not a workload of this trust domain"
            )
        return replace(
            caller,
            spiffe_id=workload_identity(self._trust_domain, *account),
            namespace=account[0],
            service_account=account[1],
            subject=f"{caller.subject} as {wanted}",
        )


class ErrorInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Maps `CaError` to its status and anything else to a generic INTERNAL."""

    def __init__(self) -> None:
        # method handler -> its guarded copy, built once instead of on every call
        self._guarded: dict[int, tuple[Any, Any]] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._guarded.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = self._guard(handler, handler_call_details.method)
        self._guarded[id(handler)] = (handler, guarded)
        return guarded

    @staticmethod
    def _guard(handler: Any, method: str) -> Any:
        inner = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except CaError as exc:
                context.abort(exc.code, exc.public_message)
            except Exception:
                log.exception("unexpected error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error in the CA; see its log")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
