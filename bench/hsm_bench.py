"""The HSM phase of `make bench` (issue 24): the same CA with its key in SoftHSM2 and with a
key file, interleaved in the same run at c=32, plus the cost of one signature inside SoftHSM2
on its own.

Both CAs run 2 workers, TLS, the same embedded token issuer (its directory copied into both
data dirs) and an SQLite record; only `--ca-key pkcs11:...` differs. The goals compare the
HSM CA's CPU per certificate and throughput with the file-key CA's figures of this phase.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ca_bench
from bench.ca_compare import Server, at, interleaved
from tests.support.ca_process import RunningCa

HSM_CONCURRENCY = 32
LABEL = "bench-root"


def _start(data_dir: Path, issuer_from: Path, *extra: str) -> RunningCa:
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o700)
    shutil.copytree(issuer_from / "token-issuer", data_dir / "token-issuer")
    return ca_bench.start_bulwark(data_dir, *extra)


def hsm_phase(
    work: Path,
    wl_file: Path,
    issuer_dir: Path,
    r: dict[str, Any],
    *,
    rounds: int,
    window_s: float,
    log: Callable[[str], None],
) -> None:
    """Fill `r` with the file-key vs HSM-key figures and the SoftHSM2 signature cost."""
    import os

    from tests.support.softhsm import make_softhsm

    hsm = make_softhsm(work / "softhsm")
    os.environ.update(hsm.env)  # the HSM CA (a child) and the in-process sign loop see it
    _make_key(hsm.label, hsm.pin_file)
    log("signature cost inside SoftHSM2 alone (ECDSA P-256, one core)")
    r["hsm_sign"] = sign_cost_us(hsm.label, hsm.pin_file)
    file_ca = _start(work / "filekey", issuer_dir)
    hsm_ca = _start(work / "hsmkey", issuer_dir, *hsm.flags(LABEL))
    try:
        servers = []
        for name, ca in (("filekey", file_ca), ("hsmkey", hsm_ca)):
            assert ca.process is not None
            servers.append(Server(name, "grpc", ca.grpc_addr, ca.process.pid, ca.root_cert_path))
        log(
            f"Bulwark CA with a key file vs the key in SoftHSM2 (2 workers each) at "
            f"c={HSM_CONCURRENCY}, {rounds} interleaved rounds of {window_s:g} s"
        )
        rows, _ = interleaved(
            servers, wl_file, [HSM_CONCURRENCY], rounds=rounds, window_s=window_s, log=log
        )
    finally:
        file_ca.stop()
        hsm_ca.stop()
    r.update(hsm_runs=rows["hsmkey"], filekey_runs=rows["filekey"])
    ours, theirs = at(rows["hsmkey"], HSM_CONCURRENCY), at(rows["filekey"], HSM_CONCURRENCY)
    r.update(
        ca_hsm_cpu_us_per_cert=ours.get("server_cpu_us_per_cert"),
        ca_hsm_certs_per_s=ours.get("certs_per_s"),
        ca_filekey_cpu_us_per_cert=theirs.get("server_cpu_us_per_cert"),
        ca_filekey_certs_per_s=theirs.get("certs_per_s"),
    )


def _make_key(token_label: str, pin_file: Path) -> None:
    from ca_server.hsm.generate import generate_keypair
    from ca_server.hsm.pin import pin_from_file
    from ca_server.hsm.token import HsmToken
    from ca_server.hsm.uri import Pkcs11Uri
    from certs.keys import KeyType
    from tests.support.softhsm import MODULE

    token = HsmToken(module=MODULE, token_label=token_label, pin=pin_from_file(pin_file))
    token.open()
    try:
        generate_keypair(token, Pkcs11Uri(token=token_label, object=LABEL), KeyType.EC_P256)
    finally:
        token.close()


def sign_cost_us(token_label: str, pin_file: Path, seconds: float = 3.0) -> dict[str, float]:
    """CPU and wall time of one ECDSA P-256 signature over a leaf-sized TBS: through Bulwark's
    HSM key (SHA-256 here, CKM_ECDSA in SoftHSM2, r||s to DER) and with a software key."""
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from ca_server.authority.custody import HsmCustody
    from ca_server.hsm.pin import pin_from_file
    from ca_server.hsm.token import HsmToken
    from ca_server.hsm.uri import Pkcs11Uri
    from certs.keys import KeyType, generate_key
    from tests.support.softhsm import MODULE

    tbs = os.urandom(420)
    algorithm = ec.ECDSA(hashes.SHA256())
    token = HsmToken(module=MODULE, token_label=token_label, pin=pin_from_file(pin_file))
    token.open()
    try:
        hsm_key = HsmCustody(token, Pkcs11Uri(token=token_label, object=LABEL)).initial_key()
        soft_key = generate_key(KeyType.EC_P256)
        out: dict[str, float] = {}
        keys = [(n, k) for n, k in (("softhsm", hsm_key), ("software", soft_key))]
        for name, key in keys:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            n, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
            deadline = time.monotonic() + seconds / 2
            while time.monotonic() < deadline:
                for _ in range(50):
                    key.sign(tbs, algorithm)
                n += 50
            out[f"{name}_cpu_us"] = (time.process_time() - cpu0) / n * 1e6
            out[f"{name}_wall_us"] = (time.perf_counter() - wall0) / n * 1e6
        return out
    finally:
        token.close()


__all__ = ["HSM_CONCURRENCY", "hsm_phase", "sign_cost_us"]
