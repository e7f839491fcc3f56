"""Errors of the CA server, each knowing its gRPC status (SPEC §1 error table).

    CaError                         INTERNAL, generic message
    ├── AuthenticationError         UNAUTHENTICATED
    │   └── ImpersonationRefused    UNAUTHENTICATED
    ├── UpstreamUnavailable         UNAVAILABLE (retryable: TokenReview API down, ...)
    ├── InvalidRequest              INVALID_ARGUMENT
    │   ├── CsrRejected             INVALID_ARGUMENT (csr_error label)
    │   └── TtlTooLong              INVALID_ARGUMENT (TTL_ERROR)
    ├── IdentityMismatch            PERMISSION_DENIED (strict CSR policy)
    ├── CaNotReady                  INTERNAL (CA_NOT_READY)
    ├── SigningFailed               INTERNAL (CERT_GEN_ERROR)
    └── RecordWriteFailed           INTERNAL (the issuance record could not be written)

`CertificateService.CreateCertificate` turns these into `context.abort(code, public_message)`;
anything else becomes INTERNAL with a generic message and is logged. RESOURCE_EXHAUSTED
comes from grpc itself, for a call beyond --max-concurrent-rpcs.
"""

from __future__ import annotations

import grpc


class CaError(Exception):
    """Root of the CA's errors. `public_message` is what the client is told."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    sign_error: str | None = None  # label of citadel_server_csr_sign_err_count, if any

    def __init__(self, public_message: str) -> None:
        super().__init__(public_message)
        self.public_message = public_message


class AuthenticationError(CaError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ImpersonationRefused(AuthenticationError):
    pass


class UpstreamUnavailable(CaError):
    code = grpc.StatusCode.UNAVAILABLE


class InvalidRequest(CaError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class CsrRejected(InvalidRequest):
    sign_error = "CSR_ERROR"


class TtlTooLong(InvalidRequest):
    sign_error = "TTL_ERROR"


class IdentityMismatch(CaError):
    code = grpc.StatusCode.PERMISSION_DENIED


class CaNotReady(CaError):
    sign_error = "CA_NOT_READY"


class SigningFailed(CaError):
    sign_error = "CERT_GEN_ERROR"


class RecordWriteFailed(CaError):
    sign_error = "UNKNOWN"


class ConfigError(Exception):
    """The CA cannot start: bad flags, missing or inconsistent CA files. Message says what to fix."""
