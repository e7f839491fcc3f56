"""Errors of the CA server, each knowing its gRPC status and its refusal reason.

    class                           gRPC status         reason (bulwark_ca_refusals_total)
    CaError                         INTERNAL            internal (generic message)
    ├── AuthenticationError         UNAUTHENTICATED     authentication
    │   └── ImpersonationRefused    UNAUTHENTICATED     authentication
    ├── UpstreamUnavailable         UNAVAILABLE         authentication (TokenReview API down, ...)
    ├── IdentityMismatch            PERMISSION_DENIED   csr_policy (strict CSR policy)
    ├── InvalidRequest              INVALID_ARGUMENT    bad_request
    │   ├── CsrRejected             INVALID_ARGUMENT    csr_policy (CSR_ERROR)
    │   └── TtlTooLong              INVALID_ARGUMENT    bad_request (TTL_ERROR)
    ├── Overloaded                  RESOURCE_EXHAUSTED  overload (beyond --max-concurrent-rpcs)
    │   └── OutOfDescriptors        UNAVAILABLE         overload (no file descriptor left)
    ├── RecordWriteFailed           INTERNAL            record_failure
    ├── CaNotReady                  INTERNAL            internal (CA_NOT_READY)
    │   └── ClockBehind             UNAVAILABLE         internal (CA_NOT_READY; clock behind CA)
    └── SigningFailed               INTERNAL            internal (CERT_GEN_ERROR)

Every servicer method of the CA is wrapped by `ca_server.issuance.refusals.refusals`, the
one place where these become `context.abort(code, public_message)`, are counted and
logged; anything else becomes INTERNAL with a generic message and is logged. A failure
caused by running out of file descriptors becomes `OutOfDescriptors` there, whatever
raised it.
`REFUSAL_REASONS`, the label set of the refusal metric, is computed from this tree.
"""

from __future__ import annotations

import grpc


class CaError(Exception):
    """Root of the CA's errors. `public_message` is what the client is told."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"  # label of bulwark_ca_refusals_total: CA not ready, a bug, ...
    sign_error: str | None = None  # label of citadel_server_csr_sign_err_count, if any

    def __init__(self, public_message: str) -> None:
        super().__init__(public_message)
        self.public_message = public_message


class AuthenticationError(CaError):
    """No, bad or unverifiable credential."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "authentication"


class ImpersonationRefused(AuthenticationError):
    pass


class UpstreamUnavailable(CaError):
    """What the CA needs to answer is not there now (retryable)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "authentication"


class IdentityMismatch(CaError):
    """The CSR asks for another identity than the caller's."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "csr_policy"


class InvalidRequest(CaError):
    """An undecodable request, or a value out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "bad_request"


class CsrRejected(InvalidRequest):
    """A CSR unusable or asking for CA powers."""

    reason = "csr_policy"
    sign_error = "CSR_ERROR"


class TtlTooLong(InvalidRequest):
    sign_error = "TTL_ERROR"


class Overloaded(CaError):
    """More calls in flight than --max-concurrent-rpcs allows."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "overload"


class OutOfDescriptors(Overloaded):
    """The process ran out of file descriptors (EMFILE/ENFILE): retryable, as connections
    close (`ca_server.descriptors` decides)."""

    code = grpc.StatusCode.UNAVAILABLE


class RecordWriteFailed(CaError):
    """The issuance record could not be written: nothing is sent."""

    reason = "record_failure"
    sign_error = "UNKNOWN"


class CaNotReady(CaError):
    sign_error = "CA_NOT_READY"


class ClockBehind(CaNotReady):
    """This CA's clock is before its own CA certificates' validity: retryable, since the
    clock will be set right (NTP) or catch up."""

    code = grpc.StatusCode.UNAVAILABLE


class SigningFailed(CaError):
    sign_error = "CERT_GEN_ERROR"


def _reasons(root: type[CaError]) -> tuple[str, ...]:
    """Every `reason` of the tree under `root`, in the order drawn above, the root's own last
    (it names what no other class describes)."""
    seen: dict[str, None] = {}
    stack = list(reversed(root.__subclasses__()))
    while stack:
        cls = stack.pop()
        seen.setdefault(cls.reason, None)
        stack.extend(reversed(cls.__subclasses__()))
    seen.pop(root.reason, None)
    return (*seen, root.reason)


# The bounded label set of bulwark_ca_refusals_total (and the web view's refusal rows).
# Subclasses defined elsewhere reuse these reasons (tests/unit/ca_server/test_errors.py).
REFUSAL_REASONS = _reasons(CaError)


def refusal_label_sets(root: type[CaError] = CaError) -> tuple[tuple[str, str], ...]:
    """Every (reason, gRPC code name) a refusal can carry: one per class of the tree under
    `root` as imported now (the root's own included), in the order drawn above. The CA
    creates these series at 0 before the first call, as Prometheus asks of known labels."""
    seen: dict[tuple[str, str], None] = {}
    stack: list[type[CaError]] = [root]
    while stack:
        cls = stack.pop()
        seen.setdefault((cls.reason, cls.code.name), None)
        stack.extend(reversed(cls.__subclasses__()))
    return tuple(seen)


class ConfigError(Exception):
    """The CA cannot start: bad flags, missing or inconsistent CA files. Message says what to fix."""
