"""Errors of the PKCS#11 key custody.

HsmError                        root; messages name the key URI, never the PIN
├── HsmConfigError              the CA cannot start (also a ConfigError: exit 2, one line):
│                               malformed URI, missing module, unknown token, wrong PIN,
│                               missing key, key of the wrong type or with weak attributes
└── HsmUnavailable              a session was lost while serving (token removed, HSM
                                restarted, module error): UNAVAILABLE to callers, whose
                                Istio clients retry while the CA reconnects
"""

from __future__ import annotations

from ca_server.errors import ConfigError, UpstreamUnavailable


class HsmError(Exception):
    """Root of the HSM errors."""


class HsmConfigError(HsmError, ConfigError):
    """The HSM key cannot be used at all; the message names the URI and the fix."""


class HsmUnavailable(HsmError, UpstreamUnavailable):
    """The HSM does not answer now; the CA reconnects with backoff."""

    reason = "internal"  # the CA cannot sign now; not the caller's authentication
    sign_error = "CA_NOT_READY"

    def __init__(
        self, public_message: str = "the CA's signing key (HSM) is unreachable; retry"
    ) -> None:
        super().__init__(public_message)


__all__ = ["HsmConfigError", "HsmError", "HsmUnavailable"]
