"""A real SoftHSM2 token per test: its own `SOFTHSM2_CONF` and token directory under the
test's tmp_path, initialised with `softhsm2-util`, and OpenSC's `pkcs11-tool` as a client
that is not Bulwark's.

`make test` installs the Debian packages softhsm2 and opensc; a machine without them fails
these tests loudly (never a skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
USER_PIN = "2468-bulwark"
SO_PIN = "13579-so"
TOKEN = "bulwark"


def require_softhsm() -> None:
    missing = [
        what
        for what, ok in (
            ("softhsm2-util (Debian package softhsm2)", shutil.which("softhsm2-util")),
            (f"{MODULE} (Debian package softhsm2)", MODULE.is_file()),
            ("pkcs11-tool (Debian package opensc)", shutil.which("pkcs11-tool")),
        )
        if not ok
    ]
    if missing:
        pytest.fail(f"the HSM tests need {', '.join(missing)}; `make test` installs them")


@dataclass
class SoftHsm:
    """One SoftHSM2 configuration with an initialised token labelled `label`."""

    root: Path
    label: str = TOKEN

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def token_dir(self) -> Path:
        return self.root / "tokens"

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to see this token (and nothing of the caller's)."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    @property
    def pin_file(self) -> Path:
        path = self.root / "user.pin"
        if not path.exists():
            path.write_text(USER_PIN + "\n")
            path.chmod(0o600)
        return path

    def uri(self, object_label: str) -> str:
        return f"pkcs11:token={self.label};object={object_label}"

    def flags(self, object_label: str) -> list[str]:
        """`ca serve` / `ca hsm` flags for the key `object_label` on this token."""
        return [
            "--ca-key",
            self.uri(object_label),
            "--pkcs11-module",
            str(MODULE),
            "--pkcs11-pin-file",
            str(self.pin_file),
        ]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command with this token's SOFTHSM2_CONF."""
        return subprocess.run(
            list(args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def pkcs11_tool(self, *args: str, check: bool = True) -> str:
        """OpenSC's pkcs11-tool, logged in to this token."""
        done = self.run(
            "pkcs11-tool",
            "--module",
            str(MODULE),
            "--token-label",
            self.label,
            "--login",
            "--pin",
            USER_PIN,
            *args,
            check=check,
        )
        return done.stdout + done.stderr

    def private_key_objects(self) -> list[dict[str, str]]:
        """Every private key on the token as pkcs11-tool lists it (label, ID, access flags)."""
        out = self.pkcs11_tool("--list-objects", "--type", "privkey")
        keys: list[dict[str, str]] = []
        for line in out.splitlines():
            if line.startswith("Private Key Object"):
                keys.append({"kind": line.split(";", 1)[1].strip()})
            elif keys and ":" in line:
                name, _, value = line.strip().partition(":")
                keys[-1][name.strip().lower()] = value.strip()
        return keys

    @contextmanager
    def moved_away(self) -> Iterator[None]:
        """The token directory unreadable at its path (renamed: chmod does not stop root,
        which runs the tests), then back."""
        away = self.token_dir.with_name("tokens.away")
        self.token_dir.rename(away)
        try:
            yield
        finally:
            away.rename(self.token_dir)


def make_softhsm(root: Path, label: str = TOKEN) -> SoftHsm:
    """A fresh SoftHSM2 configuration and token under `root`."""
    require_softhsm()
    hsm = SoftHsm(root=root, label=label)
    hsm.token_dir.mkdir(parents=True)
    hsm.conf.write_text(
        f"directories.tokendir = {hsm.token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm.run(
        "softhsm2-util", "--init-token", "--free", "--label", label,
        "--pin", USER_PIN, "--so-pin", SO_PIN,
    )  # fmt: skip
    return hsm


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    """A SoftHSM2 token of this test alone; SOFTHSM2_CONF points at it in this process too."""
    hsm = make_softhsm(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    return hsm
