"""Readiness of an HSM-held CA key: the supervisor signs a probe digest every few seconds.

A lost session turns readiness false (and the token logs the outage once); the token's own
backoff paces the reconnect attempts, so a probe while the HSM is down costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ca_server.hsm.errors import HsmUnavailable
from ca_server.hsm.keys import HsmEcKey, HsmRsaKey
from certs.keys import PrivateKey

PROBE_INTERVAL_S = 2.0
_PROBE = b"bulwark readiness probe"


class HsmReadiness:
    """Whether the key `key()` returns signs now (always true for a file key)."""

    def __init__(self, key: Callable[[], PrivateKey]) -> None:
        self._key = key
        self.ready = True
        self.where: str | None = None

    def probe(self) -> bool:
        key = self._key()
        if not isinstance(key, (HsmEcKey, HsmRsaKey)):
            self.ready = True
            return True
        self.where = key.token.where
        try:
            if isinstance(key, HsmEcKey):
                key.sign(_PROBE, ec.ECDSA(hashes.SHA256()))
            else:
                key.sign(_PROBE, padding.PKCS1v15(), hashes.SHA256())
        except HsmUnavailable:
            self.ready = False
        else:
            self.ready = True
        return self.ready

    def detail(self) -> str:
        if self.ready:
            return "CA key reachable" if self.where else ""
        return f"CA key in the HSM ({self.where}) unreachable, reconnecting; the CA log says why"

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.probe)
            await asyncio.sleep(PROBE_INTERVAL_S)


__all__ = ["PROBE_INTERVAL_S", "HsmReadiness"]
