"""Errors of the agent, each knowing the gRPC status a workload should see.

    AgentError                      INTERNAL, generic message
    ├── ConfigError                 the agent cannot start: bad env var or flag (never sent)
    ├── BadRequest                  INVALID_ARGUMENT: not valid protobuf, or a malformed request
    ├── UnknownResource             INVALID_ARGUMENT: SDS name the agent does not serve
    ├── TooManyResources            RESOURCE_EXHAUSTED: file resource cap reached
    ├── SecretUnavailable           UNAVAILABLE: no such secret yet (CA down, file missing)
    ├── CaRequestFailed             UNAVAILABLE: the CSR failed after Istio's retries
    │   ├── CaResponseInvalid       the CA answered with something unusable
    │   └── CaRefusedArgument       INVALID_ARGUMENT: the CA refused the request's arguments
    └── FileSecretError             a watched certificate/key/root file cannot be used

`public_message` is what a client is told; it never holds key material or tokens.
"""

from __future__ import annotations

import grpc


class AgentError(Exception):
    """Root of the agent's errors."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, public_message: str) -> None:
        super().__init__(public_message)
        self.public_message = public_message


class ConfigError(AgentError):
    """An environment variable or flag has a value the agent cannot use."""


class BadRequest(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownResource(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class TooManyResources(AgentError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class SecretUnavailable(AgentError):
    code = grpc.StatusCode.UNAVAILABLE


class CaRequestFailed(AgentError):
    """The CA could not be reached or refused the CSR; `grpc_code` says how."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self,
        public_message: str,
        grpc_code: grpc.StatusCode | None = None,
        *,
        definitive: bool = False,
    ) -> None:
        super().__init__(public_message)
        self.grpc_code = grpc_code
        self.definitive = definitive  # the CA refused; asking again soon will not help


class CaRefusedArgument(CaRequestFailed):
    """The CA answered INVALID_ARGUMENT: the workload's request can never succeed, so the
    workload is told so, not asked to retry."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class CaResponseInvalid(CaRequestFailed):
    """The CA's answer cannot be used: short chain, other identity, other key, bad signature."""


class FileSecretError(AgentError):
    code = grpc.StatusCode.UNAVAILABLE
