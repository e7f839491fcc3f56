"""CA fault suite (issue #13): an operator's worst day, against a real CA under load.

Each fault runs while a load driver asks for certificates and notes every answer. Each
test asserts the documented behaviour and that nothing was lost: every certificate a
client received is in the record and the record's hash chain verifies. Each prints one
`FAULT {...}` line (run with -s): the codes clients saw, the recovery time, data lost.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from tests.support.ca_process import RunningCa, start_ca
from tests.support.faults import (
    admin_get,
    fill,
    metric_value,
    nothing_lost,
    restart_postgres,
    small_tmpfs,
    summary,
)
from tests.support.load import Load
from tests.support.postgres import start_postgres
from tests.support.record_processes import descendants, sigkill_ca

KILLS = 2


def _sqlite(ca: RunningCa) -> str:
    return f"sqlite:///{ca.data_dir / 'record.db'}"


def _wait_log(ca: RunningCa, text: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while text not in ca.log():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{ca.log()[-2000:]}"
        time.sleep(0.05)
    return time.time()


def test_kill_9_of_the_whole_ca_under_load_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of supervisor and workers mid-issuance: every received serial is recorded,
    the chain verifies, and a restart on the same ports serves again."""
    rng = random.Random()
    ca = start_ca(tmp_path / "ca", workers=2)
    load = Load(ca, tmp_path)
    recoveries, outage_codes = [], []
    try:
        served_since = 0.0
        for kill in range(KILLS):
            load.wait_for_ok(20, after=served_since)
            time.sleep(rng.uniform(0.0, 0.3))
            killed_at = time.time()
            sigkill_ca(ca)
            dead_at = time.time()  # every answer from here on comes from the next incarnation
            nothing_lost(_sqlite(ca), load, f"after kill {kill + 1}")
            ca.restart()
            served_since = load.wait_for_ok(1, after=dead_at)
            recoveries.append(round(served_since - killed_at, 2))
            outage_codes.append(load.codes(killed_at, served_since))
        load.wait_for_ok(20, after=served_since)
    finally:
        load.stop()
        assert ca.stop() == 0
    total = nothing_lost(_sqlite(ca), load, "at the end")
    summary(
        "kill -9 whole CA (2 workers, SQLite)",
        kills=KILLS,
        received=total,
        codes=load.codes(),
        outage_codes=outage_codes,
        recovery_s_incl_restart=recoveries,
        lost=0,
    )


def test_kill_9_of_one_worker_keeps_clients_served(tmp_path: Path) -> None:
    """One worker killed: the supervisor restarts it; the other worker keeps serving."""
    ca = start_ca(tmp_path / "ca", workers=2)
    load = Load(ca, tmp_path)
    try:
        load.wait_for_ok(20)
        assert ca.process is not None
        workers = [
            p
            for p in descendants(ca.process.pid)
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert len(workers) == 2, workers
        killed_at = time.time()
        os.kill(workers[0], signal.SIGKILL)
        _wait_log(ca, "restarting it")
        deadline = time.monotonic() + 30
        while admin_get(ca, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "the restarted worker never became ready"
            time.sleep(0.05)
        restarted_at = time.time()
        load.wait_for_ok(20, after=restarted_at)
        during = load.codes(killed_at, restarted_at)
        assert during.get("OK", 0) > 0, f"nobody was served while the worker restarted: {during}"
        assert ca.process.poll() is None
    finally:
        load.stop()
        assert ca.stop() == 0
    total = nothing_lost(_sqlite(ca), load, "worker kill")
    summary(
        "kill -9 one of 2 workers",
        received=total,
        codes_while_restarting=during,
        worker_back_s=round(restarted_at - killed_at, 2),
        codes=load.codes(),
        lost=0,
    )


def test_disk_full_gives_internal_records_everything_and_recovers(tmp_path: Path) -> None:
    """The record's file system fills up: INTERNAL, never a certificate left unrecorded;
    issuance resumes without a restart once space is back."""
    with small_tmpfs(tmp_path / "mnt") as mnt:
        ca = RunningCa(data_dir=mnt / "ca", args=("--workers", "1"), env={})
        ca.log_path = tmp_path / "ca.log"  # not on the file system being filled
        ca.start()
        load = Load(ca, tmp_path)
        try:
            load.wait_for_ok(10)
            filled_at = time.time()
            filler = fill(mnt)
            load.wait_for_error("INTERNAL", after=filled_at)
            time.sleep(0.5)
            nothing_lost(_sqlite(ca), load, "disk full")
            freed_at = time.time()
            filler.unlink()
            served_at = load.wait_for_ok(10, after=freed_at)
            assert ca.process is not None and ca.process.poll() is None, "the CA restarted"
            while_full = load.codes(filled_at, freed_at)
        finally:
            load.stop()
            stopped = ca.stop()
        assert stopped == 0, ca.log()[-2000:]
        total = nothing_lost(_sqlite(ca), load, "after the disk-full")
    assert set(while_full) <= {"OK", "INTERNAL"}, while_full
    summary(
        "disk full (64 MiB tmpfs, SQLite record)",
        received=total,
        codes_while_full=while_full,
        recovery_s_after_space_freed=round(served_at - freed_at, 2),
        codes=load.codes(),
        lost=0,
    )


def test_postgresql_restart_mid_issuance_loses_nothing(tmp_path: Path) -> None:
    """PostgreSQL crashes and restarts under load: refusals only, nothing unrecorded, and
    issuance resumes in the same CA process."""
    cluster = start_postgres()
    try:
        url = cluster.database("faults")
        ca = start_ca(tmp_path / "ca", "--record", url, workers=1)
        load = Load(ca, tmp_path)
        try:
            load.wait_for_ok(10)
            restarted_at = time.time()
            took = restart_postgres(cluster)
            served_at = load.wait_for_ok(10, after=restarted_at + took)
            assert ca.process is not None and ca.process.poll() is None, "the CA restarted"
            during = load.codes(restarted_at, served_at)
        finally:
            load.stop()
            assert ca.stop() == 0
        total = nothing_lost(url, load, "PostgreSQL restart")
    finally:
        cluster.stop()
    assert set(during) <= {"OK", "INTERNAL", "UNAVAILABLE"}, during
    summary(
        "PostgreSQL restart -m immediate mid-issuance",
        received=total,
        codes_during_restart=during,
        postgres_restart_s=round(took, 2),
        recovery_s_from_restart_start=round(served_at - restarted_at, 2),
        codes=load.codes(),
        lost=0,
    )


def test_ca_key_unreadable_at_runtime_keeps_serving(tmp_path: Path) -> None:
    """A directory at DATA/ca/ca-key.pem while the CA runs (root ignores file modes): clients
    keep being served with the material in memory, the failure is counted and shown in
    /readyz, and once the key is back the checks succeed again; SIGTERM exits 0."""
    ca = start_ca(tmp_path / "ca", "--material-check-interval", "0.5s", workers=1)
    key = ca.data_dir / "ca" / "ca-key.pem"
    saved = tmp_path / "saved-key.pem"
    load = Load(ca, tmp_path)
    try:
        load.wait_for_ok(5)
        broken_at = time.time()
        key.rename(saved)
        key.mkdir()
        deadline = time.monotonic() + 20
        while metric_value(ca, "bulwark_ca_material_reload_errors_total") < 2:
            assert time.monotonic() < deadline, ca.log()[-2000:]
            time.sleep(0.1)
        status, detail = admin_get(ca, "/readyz")
        assert status == 200 and "reload failing" in detail, detail
        key.rmdir()
        saved.rename(key)
        fixed_at = time.time()
        while "CA material current" not in admin_get(ca, "/readyz")[1]:
            assert time.monotonic() < deadline + 20, ca.log()[-2000:]
            time.sleep(0.1)
        back_at = time.time()
        assert metric_value(ca, "bulwark_ca_material_last_success_timestamp_seconds") >= fixed_at
        load.wait_for_ok(5, after=back_at)
        during = load.codes(broken_at, back_at)
    finally:
        load.stop()
        code = ca.stop()
    assert code == 0 and "Traceback" not in ca.log(), ca.log()[-2000:]
    assert set(during) == {"OK"}, during
    summary(
        "CA key unreadable at runtime (directory at the key path)",
        codes_while_unreadable=during,
        checks_ok_again_s_after_fix=round(back_at - fixed_at, 2),
        received=nothing_lost(_sqlite(ca), load, "key unreadable"),
        lost=0,
    )
