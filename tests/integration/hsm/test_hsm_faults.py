"""Faults of an HSM-held CA key on a real SoftHSM2 token.

While requests run, the token directory becomes unreadable (moved away: chmod does not stop
root, which runs the tests) and comes back: callers get UNAVAILABLE (which Istio's client
retries), readiness goes false, the supervisor says once what failed, and the CA signs again
without a restart, every certificate a client received in the record. At start, a wrong PIN,
a wrong module, a missing key, a key of the wrong type or with weak attributes, and a
world-readable PIN file each stop the CA with exit 2 and one line that names the URI (never
the PIN) and the fix.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.ca_process import serve_once
from tests.support.hsm_ca import CA_LABEL, TokenIssuer, admin_json, hsm_init, start_hsm_ca
from tests.support.load import Load
from tests.support.record_processes import recorded_serials, verify
from tests.support.softhsm import MODULE, USER_PIN, SoftHsm

OUTAGE_S = 3.0


def _ready(ca_admin: Callable[[], dict[str, object]]) -> bool:
    return bool(ca_admin()["ready"])


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_token_lost_and_back_under_load(tmp_path: Path, softhsm: SoftHsm) -> None:
    hsm_init(softhsm)
    issuer = TokenIssuer(tmp_path / "issuer")
    ca = start_hsm_ca(tmp_path / "ca", softhsm, issuer, workers=2)
    driver = Load(ca, tmp_path)

    def readyz() -> dict[str, object]:
        from urllib.error import HTTPError

        try:
            return dict(admin_json(ca, "/readyz"))
        except HTTPError as exc:  # 503 while not ready, with the same JSON body
            body: dict[str, object] = __import__("json").loads(exc.read())
            return body

    try:
        driver.wait_for(20)
        assert _ready(readyz)
        with softhsm.moved_away():
            lost = time.time()
            driver.wait_for_error("UNAVAILABLE", after=lost)
            _wait(lambda: not _ready(readyz), "readiness to go false")
            detail = str(readyz()["detail"])
            assert "HSM" in detail and "unreachable" in detail, detail
            time.sleep(OUTAGE_S)
        back = time.time()
        driver.wait_for_ok(20, after=back)  # signing again, same processes
        _wait(lambda: _ready(readyz), "readiness to come back")
        driver.stop()
        during = driver.codes(after=lost, before=back)
        assert set(during) <= {"OK", "UNAVAILABLE"}, during  # never INTERNAL
        assert during.get("UNAVAILABLE", 0) > 0
    finally:
        driver.stop()
        ca.stop()
    url = f"sqlite:///{ca.data_dir / 'record.db'}"
    received = set(driver.received())
    assert received <= set(recorded_serials(url))  # nothing a client got is missing
    assert verify(url).ok
    log = ca.log()
    assert "Traceback" not in log
    supervisor_lines = [
        line for line in log.splitlines() if "unreachable" in line and "worker-" not in line
    ]
    assert len(supervisor_lines) == 1, supervisor_lines  # said once, by the supervisor
    assert "pkcs11:token=bulwark" in supervisor_lines[0]
    assert "reachable again" in log
    assert USER_PIN not in log


def _refusal(tmp_path: Path, hsm: SoftHsm, *flags: str) -> str:
    """`ca serve` expected to refuse: its exit code 2 and its one line."""
    done = serve_once(tmp_path / "ca", *flags)  # SOFTHSM2_CONF: the fixture set it here
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert USER_PIN not in done.stderr and "wrong-pin" not in done.stderr
    return lines[0]


def _flags(hsm: SoftHsm, label: str = CA_LABEL, **overrides: str) -> list[str]:
    flags = dict(zip(hsm.flags(label)[::2], hsm.flags(label)[1::2], strict=True))
    flags.update(overrides)
    return [x for pair in flags.items() for x in pair]


def test_wrong_pin_stops_the_ca_with_one_line(tmp_path: Path, softhsm: SoftHsm) -> None:
    hsm_init(softhsm)
    bad = tmp_path / "bad.pin"
    bad.write_text("wrong-pin\n")
    bad.chmod(0o600)
    line = _refusal(tmp_path, softhsm, *_flags(softhsm, **{"--pkcs11-pin-file": str(bad)}))
    assert "wrong PIN" in line and str(bad) in line
    assert "pkcs11:token=bulwark;object=root-2026" in line  # the URI, never the PIN


@pytest.mark.parametrize(
    ("module", "says"),
    [
        ("/usr/lib/softhsm/libsofthsm-nope.so", "does not exist"),
        ("/etc/hostname", "cannot load PKCS#11 module"),
    ],
)
def test_wrong_module_stops_the_ca(
    tmp_path: Path, softhsm: SoftHsm, module: str, says: str
) -> None:
    hsm_init(softhsm)
    line = _refusal(tmp_path, softhsm, *_flags(softhsm, **{"--pkcs11-module": module}))
    assert says in line and module in line and "--pkcs11-module" in line
    assert "pkcs11:token=bulwark;object=root-2026" in line


def test_missing_key_stops_the_ca(tmp_path: Path, softhsm: SoftHsm) -> None:
    hsm_init(softhsm)
    line = _refusal(tmp_path, softhsm, *_flags(softhsm, label="root-1999"))
    assert "no private key matches pkcs11:token=bulwark;object=root-1999" in line
    assert "bulwark ca hsm init" in line


def test_unknown_token_stops_the_ca(tmp_path: Path, softhsm: SoftHsm) -> None:
    hsm_init(softhsm)
    line = _refusal(
        tmp_path, softhsm, *_flags(softhsm, **{"--ca-key": "pkcs11:token=nope;object=root"})
    )
    assert "no PKCS#11 token labelled 'nope'" in line and "tokens there: bulwark" in line


def test_key_of_the_wrong_type_stops_the_ca(tmp_path: Path, softhsm: SoftHsm) -> None:
    """An RSA 2048 key made by pkcs11-tool (another client): too small for a CA key here."""
    softhsm.pkcs11_tool("--keypairgen", "--key-type", "rsa:2048", "--label", "small", "--id", "0b")
    line = _refusal(tmp_path, softhsm, *_flags(softhsm, label="small"))
    assert "RSA 2048" in line and "pkcs11:token=bulwark;object=small" in line


def test_extractable_key_stops_the_ca(tmp_path: Path, softhsm: SoftHsm) -> None:
    """A key that may leave the token (made with python-pkcs11 directly) is refused."""
    script = (
        "import pkcs11\nfrom pkcs11 import Attribute as A, KeyType\n"
        f"lib = pkcs11.lib({str(MODULE)!r})\n"
        f"with lib.get_token(token_label={softhsm.label!r}).open(rw=True, user_pin={USER_PIN!r}) as s:\n"
        "    p = s.create_domain_parameters(KeyType.EC, {A.EC_PARAMS: bytes.fromhex('06082a8648ce3d030107')}, local=True)\n"
        "    p.generate_keypair(store=True, label='loose', id=b'\\x0c',"
        " private_template={A.SENSITIVE: False, A.EXTRACTABLE: True})\n"
    )
    softhsm.run(sys.executable, "-c", script)
    line = _refusal(tmp_path, softhsm, *_flags(softhsm, label="loose"))
    assert "may leave the HSM" in line and "CKA_EXTRACTABLE is true" in line
    assert "CKA_SENSITIVE is false" in line


def test_world_readable_pin_file_is_refused(tmp_path: Path, softhsm: SoftHsm) -> None:
    hsm_init(softhsm)
    softhsm.pin_file.chmod(0o644)
    line = _refusal(tmp_path, softhsm, *_flags(softhsm))
    assert "readable or writable by others (mode 0644)" in line and "chmod 600" in line
