"""Errors of node mode, each with the gRPC status a caller sees.

AgentError (agent.errors)
└── NodeError                   PERMISSION_DENIED
    ├── NotAttested             the caller could not be given an identity (says what was found)
    ├── CallerGone              the process behind a connection exited or its pid was reused
    ├── CallerChanged           the caller's identity changed since it connected
    ├── NotEntitledResource     an SDS name of another workload, or a file resource
    └── NodeLimit               RESOURCE_EXHAUSTED: identities, connections or streams
"""

from __future__ import annotations

import grpc

from agent.errors import AgentError


class NodeError(AgentError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotAttested(NodeError):
    """Attestation found no identity for the caller; the message names what it found."""


class CallerGone(NodeError):
    """The connecting process has exited (or its pid now names another process)."""


class CallerChanged(NodeError):
    """The process now attests to another identity (moved cgroup, changed uid)."""


class NotEntitledResource(NodeError):
    """An SDS resource name the caller may not ask for."""


class NodeLimit(NodeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
