"""The per-pod Bulwark agent: a drop-in for istio-agent's certificate half.

It creates the workload's key and CSR, gets the certificate from the CA
(`caclient`), renews it before expiry (`renewal`), and serves it on one unix
socket to Envoy over SDS (`sds`) and to SPIFFE libraries over the Workload API
(`workload_api`), writes it to files (`files`) and reports on a loopback status
port (`status`). Configuration comes from Istio's environment variables
(`config`); `runtime.Agent` wires the pieces together.

The names below load on first use: `python -m agent` runs this file before
`agent.__main__`, which has to act before grpc and asyncio are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.errors import (
        AgentError,
        CaRequestFailed,
        CaResponseInvalid,
        ConfigError,
        FileSecretError,
        SecretUnavailable,
        TooManyResources,
        UnknownResource,
    )

__all__ = [
    "AgentConfig",
    "AgentError",
    "CaRequestFailed",
    "CaResponseInvalid",
    "ConfigError",
    "FileSecretError",
    "SecretUnavailable",
    "TooManyResources",
    "UnknownResource",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    module = importlib.import_module("agent.config" if name == "AgentConfig" else "agent.errors")
    return getattr(module, name)
