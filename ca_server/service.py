"""`istio.v1.auth.IstioCertificateService` on a `grpc.aio` server.

The servicer authenticates (on the event loop when no I/O is needed, else in a
thread), applies impersonation rules, has the `Signer` sign on the loop, awaits
the issuance record's commit and only then answers. `CreateCertificate` is the
one place where `CaError`s become gRPC statuses and unexpected exceptions a
generic INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import grpc

from ca_server.authn import Authentication, IdentityExtractionError, workload_identity
from ca_server.errors import AuthenticationError, CaError, ImpersonationRefused
from ca_server.identity import Caller, RequestCredentials, bearer_token_of, shown
from ca_server.ledger.async_recorder import AsyncRecorder
from ca_server.metrics import CaMetrics
from ca_server.signer import CsrParseError, Signer
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain
from protos.istio.v1.auth import ca_pb2, ca_pb2_grpc

log = logging.getLogger(__name__)


def credentials_of(context: grpc.aio.ServicerContext) -> RequestCredentials:
    """Bearer token, verified-or-not client certificate, `clusterid` header and peer of a call."""
    token = bearer_token_of(context.invocation_metadata())  # one header, or AuthenticationError
    cluster_id = ""
    for key, value in context.invocation_metadata():
        if key == "clusterid" and isinstance(value, str):
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
        recorder: AsyncRecorder | None,
        metrics: CaMetrics,
        trust_domain: TrustDomain,
        trusted_node_accounts: tuple[str, ...],
    ) -> None:
        self._authn = authentication
        self._signer = signer
        self._recorder = recorder
        self._metrics = metrics
        self._trust_domain = trust_domain
        self._trusted = frozenset(trusted_node_accounts)

    async def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        try:
            chain = await self._create(request, context)
        except CaError as exc:
            await context.abort(exc.code, exc.public_message)
        except Exception:
            log.exception("unexpected error in CreateCertificate")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the CA; see its log")
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    async def _create(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> list[str]:
        metrics = self._metrics
        metrics.csr_count.inc()
        try:
            caller = await self._impersonate(await self._authenticate(context), request)
        except IdentityExtractionError:
            metrics.id_errors.inc()
            metrics.auth_failures.inc()
            raise
        except AuthenticationError:
            metrics.auth_failures.inc()
            raise
        try:
            issued = self._signer.sign(
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
        if self._recorder is not None:
            await self._recorder.record(issued.entry)  # a failure answers INTERNAL, sends nothing
        metrics.success.inc()
        # DEBUG, not INFO: the issuance record holds every certificate.
        log.debug(
            "issued certificate for %s (authenticator %s, peer %s)",
            caller.spiffe_id,
            caller.authenticator,
            caller.peer,
        )
        return issued.chain

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        creds = credentials_of(context)
        if self._authn.may_block(creds):
            return await asyncio.to_thread(self._authn.authenticate, creds)
        return self._authn.authenticate(creds)

    async def _impersonate(
        self, caller: Caller, request: ca_pb2.IstioCertificateRequest
    ) -> Caller:
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
                f"ImpersonatedIdentity {target} is not a workload of this trust domain"
            )
        await asyncio.to_thread(self._authn.authorize_impersonation, caller, *account)  # node-bound
        return replace(
            caller,
            spiffe_id=workload_identity(self._trust_domain, *account),
            namespace=account[0],
            service_account=account[1],
            subject=f"{caller.subject} as {wanted}",
        )
