"""`--ca-key pkcs11:...` and its companions: their flags (one table, `PKCS11_OPTIONS`) and the
frozen value on `CaConfig` they fill (`ca_server.cli.hsm.settings_from_args` reads them, with
the PIN's file or `BULWARK_PKCS11_PIN`, which has no flag on purpose)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ca_server.hsm.errors import HsmConfigError
from ca_server.hsm.pin import PIN_ENV, Pin, pin_from_env, pin_from_file
from ca_server.hsm.token import HsmToken
from ca_server.hsm.uri import Pkcs11Uri
from certs.cli.options import Option, optional_text

HSM_GROUP = "CA key in an HSM (PKCS#11; docs/HSM.md)"
CA_KEY = Option(
    group=HSM_GROUP, flag="--ca-key", env="BULWARK_CA_KEY", convert=optional_text,
    help="the CA key in an HSM, as an RFC 7512 URI 'pkcs11:token=LABEL;object=LABEL'; the data "
    "dir, Secret and record then hold certificates and the key's URI only",
)  # fmt: skip
MODULE = Option(
    group=HSM_GROUP, flag="--pkcs11-module", env="BULWARK_PKCS11_MODULE", convert=optional_text,
    help="the HSM's PKCS#11 module (.so), e.g. /usr/lib/softhsm/libsofthsm2.so",
)  # fmt: skip
PIN_FILE = Option(
    group=HSM_GROUP, flag="--pkcs11-pin-file", env="BULWARK_PKCS11_PIN_FILE",
    convert=optional_text,
    help="file holding the token's user PIN (mode 0600 or 0440); or the PIN in "
    "BULWARK_PKCS11_PIN, never a flag's value",
)  # fmt: skip
JWT_KEYS = Option(
    group=HSM_GROUP, flag="--jwt-keys-in-hsm", env="BULWARK_JWT_KEYS_IN_HSM", switch=True,
    help="make the JWT-SVID signing keys (ES256) inside the same token too",
)  # fmt: skip
PKCS11_OPTIONS = (CA_KEY, MODULE, PIN_FILE, JWT_KEYS)


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


def read_pin_again(path: Path | None) -> Pin:
    """A pickled `Pin` in the receiving process (a spawned worker): the same file, or the same
    variable, which the worker inherits from the supervisor's environment."""
    if path is not None:
        return pin_from_file(path)
    pin = pin_from_env(os.environ)
    if pin is None:
        raise HsmConfigError(f"{PIN_ENV} is not set in this process")
    return pin


__all__ = ["PKCS11_OPTIONS", "Pkcs11Settings", "read_pin_again"]
