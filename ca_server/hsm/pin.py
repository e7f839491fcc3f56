"""The user PIN of the token: from a file (`--pkcs11-pin-file`) or the environment
(`BULWARK_PKCS11_PIN`), never from a flag's value, which `ps` shows to every user.

A PIN file is checked like the data dir (sshd's StrictModes): one that other users can read,
or that group or others can write, is refused. Group read stays allowed because a Kubernetes
Secret volume with an `fsGroup` is mounted group-readable. The `Pin` value hides itself from
`repr`, logs and tracebacks, and never crosses a process boundary: pickled (into a spawned
worker's configuration) it carries only where it came from, and the worker reads it there.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ca_server.hsm.errors import HsmConfigError

PIN_ENV = "BULWARK_PKCS11_PIN"
_MAX_PIN_BYTES = 256


@dataclass(frozen=True, slots=True)
class Pin:
    """A token PIN and where it came from (for messages: the source, never the value)."""

    value: str = field(repr=False)
    source: str
    path: Path | None = None  # a PIN file; None: the environment variable

    def __repr__(self) -> str:
        return f"Pin(source={self.source!r})"

    def __str__(self) -> str:
        return f"the PIN from {self.source}"

    def __reduce__(self) -> tuple[object, tuple[Path | None]]:
        """Pickle where the PIN is, not the PIN: the receiving process reads it itself
        (`ca_server.hsm.settings.read_pin_again`)."""
        from ca_server.hsm.settings import read_pin_again

        return (read_pin_again, (self.path,))


def pin_from_file(path: Path) -> Pin:
    """The first line of `path`, after refusing a file others may read or change."""
    try:
        info = path.stat()
    except OSError as exc:
        raise HsmConfigError(
            f"cannot read --pkcs11-pin-file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise HsmConfigError(f"--pkcs11-pin-file {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        raise HsmConfigError(
            f"--pkcs11-pin-file {path} is readable or writable by others (mode {mode:04o}): "
            f"chmod 600 {path} (or 0440 with a group), as for a private key"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HsmConfigError(
            f"cannot read --pkcs11-pin-file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    where = f"--pkcs11-pin-file {path}"
    return Pin(_pin_text(raw, where), where, path)


def pin_from_env(environ: os._Environ[str] | dict[str, str]) -> Pin | None:
    """The PIN in `BULWARK_PKCS11_PIN`, or None when the variable is unset."""
    raw = environ.get(PIN_ENV)
    if raw is None:
        return None
    return Pin(_pin_text(raw.encode(), f"env {PIN_ENV}"), f"env {PIN_ENV}")


def _pin_text(raw: bytes, where: str) -> str:
    lines = raw.splitlines()
    try:
        text = lines[0].decode("utf-8") if lines else ""
    except UnicodeDecodeError:
        raise HsmConfigError(f"{where} is not UTF-8 text") from None
    if not text:
        raise HsmConfigError(f"{where} is empty: it must hold the token's user PIN")
    if len(text.encode()) > _MAX_PIN_BYTES:
        raise HsmConfigError(f"{where} holds more than {_MAX_PIN_BYTES} bytes: not a PIN")
    return text


__all__ = ["PIN_ENV", "Pin", "pin_from_env", "pin_from_file"]
