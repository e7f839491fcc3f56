"""`--ca-key pkcs11:...` and its companions as one frozen value on `CaConfig`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ca_server.hsm.errors import HsmConfigError
from ca_server.hsm.pin import Pin
from ca_server.hsm.token import HsmToken
from ca_server.hsm.uri import Pkcs11Uri


@dataclass(frozen=True, slots=True, kw_only=True)
class Pkcs11Settings:
    """The module, the key `--ca-key` names, the PIN, and whether JWT-SVID keys live in the
    token too. Crosses to the workers with the config (they open their own session); the PIN
    never shows in a repr."""

    module: Path
    key: Pkcs11Uri
    pin: Pin
    jwt_keys: bool = False

    def token(self, *, outage_level: int = logging.ERROR) -> HsmToken:
        """A (not yet opened) session on the key's token; messages name the key's URI."""
        return HsmToken(
            module=self.module,
            token_label=self.key.token,
            pin=self.pin,
            key_uri=self.key,
            outage_level=outage_level,
        )

    def __post_init__(self) -> None:
        if self.key.type not in (None, "private"):
            raise HsmConfigError(
                f"--ca-key {self.key} names a {self.key.type} object: the CA needs its "
                "private key (type=private, or no type)"
            )


__all__ = ["Pkcs11Settings"]
