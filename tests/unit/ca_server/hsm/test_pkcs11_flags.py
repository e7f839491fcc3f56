"""The HSM flags of `ca serve`: every bad combination refused before anything starts, with a
message naming the flag; the PIN never in a repr, the PIN file checked like a private key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ca_server.cli.hsm import settings_from_args
from ca_server.errors import ConfigError
from ca_server.hsm.pin import Pin, pin_from_file

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
URI = "pkcs11:token=bulwark;object=root"


def _args(**given: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "ca_key": None,
        "pkcs11_module": None,
        "pkcs11_pin_file": None,
        "jwt_keys_in_hsm": False,
    }
    base.update(given)
    return argparse.Namespace(**base)


@pytest.fixture
def pin_file(tmp_path: Path) -> Path:
    path = tmp_path / "pin"
    path.write_text("1234\n")
    path.chmod(0o600)
    return path


def test_no_flags_means_file_keys() -> None:
    assert settings_from_args(_args(), {}) is None


def test_settings_from_a_pin_file(pin_file: Path) -> None:
    got = settings_from_args(
        _args(ca_key=URI, pkcs11_module=MODULE, pkcs11_pin_file=str(pin_file)), {}
    )
    assert got is not None
    assert (str(got.key), str(got.module), got.pin.value) == (URI, MODULE, "1234")
    assert "1234" not in repr(got) and "1234" not in str(got.pin)


def test_settings_from_the_environment() -> None:
    got = settings_from_args(_args(ca_key=URI, pkcs11_module=MODULE), {"BULWARK_PKCS11_PIN": "99"})
    assert got is not None and got.pin.value == "99" and "99" not in repr(got)


BAD = [
    ("module without key", {"pkcs11_module": MODULE}, {}, "need --ca-key"),
    ("jwt keys without key", {"jwt_keys_in_hsm": True}, {}, "need --ca-key"),
    ("file path as key", {"ca_key": "/etc/ca-key.pem"}, {}, "--ca-key takes a PKCS#11 URI"),
    ("no module", {"ca_key": URI}, {"BULWARK_PKCS11_PIN": "1"}, "needs --pkcs11-module"),
    ("no PIN", {"ca_key": URI, "pkcs11_module": MODULE}, {}, "needs the token's user PIN"),
    ("two PINs", {"ca_key": URI, "pkcs11_module": MODULE, "pkcs11_pin_file": "PIN"}, {"BULWARK_PKCS11_PIN": "1"}, "not both"),
    ("certificate URI", {"ca_key": URI + ";type=cert", "pkcs11_module": MODULE}, {"BULWARK_PKCS11_PIN": "1"}, "names a cert object"),
    ("malformed URI", {"ca_key": "pkcs11:token=a;object=%zz", "pkcs11_module": MODULE}, {}, "percent-encoded"),
    ("empty PIN variable", {"ca_key": URI, "pkcs11_module": MODULE}, {"BULWARK_PKCS11_PIN": ""}, "is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "given", "env", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_flags_refused(
    name: str, given: dict[str, object], env: dict[str, str], says: str, pin_file: Path
) -> None:
    if given.get("pkcs11_pin_file") == "PIN":
        given = {**given, "pkcs11_pin_file": str(pin_file)}
    with pytest.raises(ConfigError) as caught:
        settings_from_args(_args(**given), env)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "ok"),
    [(0o600, True), (0o400, True), (0o640, True), (0o440, True), (0o644, False), (0o604, False),
     (0o620, False), (0o606, False)],
)  # fmt: skip
def test_pin_file_modes(tmp_path: Path, mode: int, ok: bool) -> None:
    path = tmp_path / "pin"
    path.write_text("4321\n")
    path.chmod(mode)
    if ok:
        assert pin_from_file(path).value == "4321"
        return
    with pytest.raises(ConfigError) as caught:
        pin_from_file(path)
    assert f"(mode {mode:04o})" in str(caught.value) and "4321" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"x" * 300, "not a PIN"),
    ],
)
def test_pin_file_contents(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "pin"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=says):
        pin_from_file(path)


def test_missing_pin_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read --pkcs11-pin-file"):
        pin_from_file(tmp_path / "absent")


def test_pin_repr_hides_the_value() -> None:
    pin = Pin("s3cret", "env BULWARK_PKCS11_PIN")
    assert "s3cret" not in repr(pin) and "s3cret" not in str(pin)


def test_file_key_ca_never_loads_the_pkcs11_binding() -> None:
    """python-pkcs11 is imported only when a pkcs11: key is configured."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ca_server.process.supervisor, ca_server.process.worker, ca_server.cli.serve\n"
        "import ca_server.authority.custody, ca_server.hsm.keys, ca_server.hsm.readiness\n"
        "print('pkcs11' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_pickled_pin_carries_where_it_is_not_the_pin(
    pin_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's configuration is pickled to a spawned process: the PIN stays behind and
    the worker reads it from the same file or variable."""
    import pickle

    from ca_server.hsm.pin import pin_from_env

    data = pickle.dumps(pin_from_file(pin_file))
    assert b"1234" not in data
    assert pickle.loads(data).value == "1234"
    monkeypatch.setenv("BULWARK_PKCS11_PIN", "8642")
    from_env = pin_from_env({"BULWARK_PKCS11_PIN": "8642"})
    assert from_env is not None
    data = pickle.dumps(from_env)
    assert b"8642" not in data and pickle.loads(data).value == "8642"
