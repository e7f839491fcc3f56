"""The per-pod Bulwark agent: a drop-in for istio-agent's certificate half.

It makes the workload's key and CSR and asks the CA (`upstream`), holds the
certificate, trust bundles and JWT-SVIDs and renews the certificate before
expiry (`state`), serves them on one unix socket to Envoy over SDS and to
SPIFFE libraries over the Workload API and reports on a loopback status port
(`endpoints`), reads and writes certificates as files (`files`), and runs as
`bulwark agent run` (`cli`). Its settings are one table of Istio's environment
variables and flags (`config`); `runtime.Agent` wires the pieces together.

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
