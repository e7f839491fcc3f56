"""Issue 22.6: two CA replicas on one PostgreSQL record, one of them stalled while it holds the
chain-head lock (SIGSTOP of the whole replica, as a stuck node or a long GC pause would), then
killed (SIGKILL) in the same state; each replica in turn.

The healthy replica must keep issuing while the other is frozen, the frozen one must not
commit the stalled batch when it thaws (its callers are long gone), nothing a client received
may be missing from the record, and the chain must verify (`bulwark certs verify-log` and
/v1/record/verify). A session that holds the lock and is not a CA (an operator's `psql`) makes
the replicas not ready, with the record named in /readyz.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from certs.csr import build_csr
from certs.keys import generate_key
from certs.spiffe_id import SpiffeId
from tests.support.ca_client import channel, create_certificate
from tests.support.ca_process import REPO, RunningCa, start_ca
from tests.support.faults import admin_get, nothing_lost, summary
from tests.support.load import Load
from tests.support.postgres import PostgresCluster
from tests.support.record_processes import descendants, recorded_serials, sigkill_ca

FREEZE_S = 12.0  # past the load driver's 5 s deadline and the 5 s a stalled holder keeps the lock
BULWARK = str(Path(sys.executable).parent / "bulwark")
# A session of a frozen process: idle inside a transaction that holds the chain-head row lock
# (FOR UPDATE takes RowShareLock on the table), for longer than any live writer ever is.
STALLED_HOLDER = """
SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
WHERE a.datname = current_database() AND a.state = 'idle in transaction'
  AND clock_timestamp() - a.state_change > interval '150 milliseconds'
  AND l.relation = 'chain_head'::regclass AND l.granted
"""


def _pids(ca: RunningCa) -> list[int]:
    assert ca.process is not None
    return [ca.process.pid, *descendants(ca.process.pid)]


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _stalled_holder(url: str) -> int | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(STALLED_HOLDER).fetchone()
    return int(row[0]) if row else None


def freeze_holding_the_lock(ca: RunningCa, url: str, rng: random.Random) -> list[int]:
    """SIGSTOP the whole replica at a moment its record session holds the chain-head lock;
    returns the frozen pids (SIGCONT them to thaw)."""
    for _ in range(200):
        pids = _pids(ca)
        _signal_all(pids, signal.SIGSTOP)
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            if _stalled_holder(url) is not None:
                return pids
            time.sleep(0.03)
        _signal_all(pids, signal.SIGCONT)
        time.sleep(rng.uniform(0.05, 0.3))
    raise AssertionError("never caught the replica holding the chain-head lock")


class ReadyWatch:
    """Polls a replica's /readyz in the background: (time, status, detail) samples."""

    def __init__(self, ca: RunningCa) -> None:
        self.samples: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ca,), daemon=True)
        self._thread.start()

    def _run(self, ca: RunningCa) -> None:
        while not self._stop.is_set():
            try:
                status, body = admin_get(ca, "/readyz")
            except OSError:
                status, body = 0, ""
            self.samples.append((time.time(), status, body))
            self._stop.wait(0.2)

    def statuses(self, after: float, before: float) -> dict[int, int]:
        return dict(Counter(s for at, s, _ in self.samples if after <= at < before))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Fleet:
    """The two replicas' load drivers and readiness watchers, by name."""

    loads: dict[str, Load]
    watches: dict[str, ReadyWatch]

    def other(self, name: str) -> str:
        return next(n for n in self.loads if n != name)


@dataclass(frozen=True)
class Stall:
    """What the healthy replica did while the other was frozen."""

    frozen_at: float
    thawed_at: float
    codes: dict[str, int]  # the healthy replica's answers during the freeze
    ok_second_half: int  # its OKs in the freeze's second half: it kept issuing
    readyz: dict[int, int]  # its /readyz statuses during the freeze
    longest_gap_s: float  # its longest time without an OK during the freeze

    def numbers(self) -> dict[str, object]:
        return {
            "healthy_codes_during_freeze": self.codes,
            "healthy_ok_in_second_half": self.ok_second_half,
            "healthy_readyz_during_freeze": self.readyz,
            "healthy_longest_gap_s": self.longest_gap_s,
        }


def _longest_gap(load: Load, start: float, end: float) -> float:
    times = [start, *(a.at for a in load.answers() if a.code == "OK" and start <= a.at < end), end]
    return round(max(b - a for a, b in itertools.pairwise(times)), 2)


def _stall(name: str, ca: RunningCa, fleet: Fleet, url: str, rng: random.Random) -> Stall:
    """Freeze replica `name` holding the lock for FREEZE_S, then thaw it; it must serve again."""
    fleet.loads[name].wait_for_ok(10, after=time.time())
    pids = freeze_holding_the_lock(ca, url, rng)
    frozen_at = time.time()
    time.sleep(FREEZE_S)
    thawed_at = time.time()
    _signal_all(pids, signal.SIGCONT)
    fleet.loads[name].wait_for_ok(5, after=thawed_at, timeout=60)
    other = fleet.other(name)
    return Stall(
        frozen_at=frozen_at,
        thawed_at=thawed_at,
        codes=fleet.loads[other].codes(frozen_at, thawed_at),
        ok_second_half=fleet.loads[other].codes(frozen_at + FREEZE_S / 2, thawed_at).get("OK", 0),
        readyz=fleet.watches[other].statuses(frozen_at, thawed_at),
        longest_gap_s=_longest_gap(fleet.loads[other], frozen_at, thawed_at),
    )


def _kill(name: str, ca: RunningCa, fleet: Fleet, url: str, rng: random.Random) -> float:
    """SIGKILL replica `name` while it holds the lock and restart it; seconds until the other
    replica issued again."""
    fleet.loads[name].wait_for_ok(10, after=time.time())
    freeze_holding_the_lock(ca, url, rng)
    sigkill_ca(ca)
    killed_at = time.time()
    served_at = fleet.loads[fleet.other(name)].wait_for_ok(5, after=killed_at, timeout=30)
    ca.start(ca.grpc_addr, ca.admin_addr, ca.mtls_addr)
    fleet.loads[name].wait_for_ok(5, after=time.time(), timeout=60)
    return round(served_at - killed_at, 2)


@pytest.mark.slow
def test_a_stalled_or_killed_replica_does_not_stop_the_other(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    rng = random.Random()
    url = postgres_cluster.database("stall")
    cas = {n: start_ca(tmp_path / n, "--record", url, workers=2) for n in ("a", "b")}
    fleet = Fleet(
        loads={n: Load(ca, tmp_path, threads=4) for n, ca in cas.items()},
        watches={n: ReadyWatch(ca) for n, ca in cas.items()},
    )
    try:
        stalls = {n: _stall(n, cas[n], fleet, url, rng) for n in cas}
        kills = {n: _kill(n, cas[n], fleet, url, rng) for n in cas}
        verified = {n: json.loads(admin_get(ca, "/v1/record/verify")[1]) for n, ca in cas.items()}
    finally:
        for watch in fleet.watches.values():
            watch.stop()
        for load in fleet.loads.values():
            load.stop()
        for ca in cas.values():
            ca.stop()
    received = {n: nothing_lost(url, load, f"replica {n}") for n, load in fleet.loads.items()}
    cli = subprocess.run(
        [BULWARK, "certs", "verify-log", "--record", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    all_received = {s for load in fleet.loads.values() for s in load.received()}
    never_received = set(recorded_serials(url)) - all_received
    summary(
        "one replica of two frozen (SIGSTOP) or killed while holding the chain-head lock",
        received=received,
        recorded_never_received=len(never_received),
        **{f"freeze {n}": stall.numbers() for n, stall in stalls.items()},
        **{f"kill {n}": {"healthy_resumed_s_after_kill": s} for n, s in kills.items()},
    )
    assert cli.returncode == 0 and "record intact" in cli.stdout, cli.stdout + cli.stderr
    assert all(v["ok"] for v in verified.values()), verified
    for name, stall in stalls.items():
        assert stall.codes.get("OK", 0) > 0, (f"{name} frozen", stall)
        assert stall.ok_second_half > 0, (f"{name} frozen", stall)


def _ready(ca: RunningCa, want: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, body = admin_get(ca, "/readyz")
        if status == want:
            return body
        assert time.monotonic() < deadline, f"/readyz never {want}: {status} {body}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_session_holding_the_chain_lock_makes_the_ca_not_ready_and_says_who(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    """An operator's session left open on the chain-head row (no server-side bound applies to
    it): after the 10 s lock wait the CA refuses with INTERNAL instead of hanging its callers, /readyz turns 503 naming
    the record and the session, an error is logged; once it is let go, all is well again."""
    url = postgres_cluster.database("held")
    ca = start_ca(tmp_path / "ca", "--record", url)
    csr = build_csr(generate_key(), SpiffeId.parse("spiffe://cluster.local/ns/ops/sa/x"))
    token = ca.mint_token("ops", "x")
    chan = channel(ca.grpc_addr, ca.root_cert_path)
    try:
        assert create_certificate(chan, csr, token=token)
        _ready(ca, 200)
        operator = psycopg.connect(url, application_name="operator-psql")
        operator.execute("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")
        try:
            body = json.loads(_ready(ca, 503))["detail"]
            assert "issuance record" in body and "cannot commit" in body, body
            assert "operator-psql (idle in transaction" in body, body
            with pytest.raises(grpc.RpcError) as refused:
                create_certificate(chan, csr, token=token, timeout=20)
            assert refused.value.code() == grpc.StatusCode.INTERNAL, refused.value
        finally:
            operator.rollback()
            operator.close()
        _ready(ca, 200)
        assert create_certificate(chan, csr, token=token)
    finally:
        chan.close()
        ca.stop()
    assert "cannot commit" in ca.log() and "commits again" in ca.log(), ca.log()[-3000:]
