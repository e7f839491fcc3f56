"""Running out of file descriptors (issue 22 item 9), in-process: wherever it surfaces, the
caller is answered UNAVAILABLE and the CA says so once; a key file that cannot be re-read
is never taken for an unknown key; the per-peer share reads /proc/net/tcp right."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from ca_server.authn.jwks import REFRESH_COOLDOWN_S, JwksSource
from ca_server.descriptors import out_of_descriptors, raise_limit
from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.process.connections import Connection, accepted, connection_cap, over_share
from ca_server.record.entry import IssuedCertificate
from ca_server.record.ledger.errors import LedgerWriteError
from tests.support import broken
from tests.support.testca import Aborted, MemoryRecorder, TestCa

ME = "spiffe://cluster.local/ns/demo/sa/frontend"
REPO = Path(__file__).resolve().parents[3]


class FailingRecorder(MemoryRecorder):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def record(self, entry: IssuedCertificate, *, within: float | None = None) -> None:
        raise self.error


def _emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(tmp_path_factory.mktemp("descriptors"))


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(LedgerWriteError.of(_emfile()), id="record write caused by EMFILE"),
        pytest.param(OSError(errno.ENFILE, "File table overflow"), id="bare ENFILE"),
        pytest.param(UpstreamUnavailable("keys"), id="EMFILE under an UNAVAILABLE"),
    ],
)
def test_running_out_of_descriptors_is_unavailable_and_said_once(
    base: TestCa, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    if isinstance(error, UpstreamUnavailable):
        error.__cause__ = _emfile()
    ca = TestCa.with_material(
        base.config, base.material, base.issuer, recorder=FailingRecorder(error)
    )
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            with pytest.raises(Aborted) as refused:
                ca.issue(broken.csr_pem(broken.good_key(), uris=(ME,)), token=ca.mint())
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert "out of file descriptors" in refused.value.details
    said = [r for r in caplog.records if "out of file descriptors (" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR, said
    assert "limit" in said[0].getMessage() and "ulimit -n" in said[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for it"
    assert ca.metric("bulwark_ca_refusals_total", reason="overload", code="UNAVAILABLE") == 3


def test_a_failure_hiding_its_errno_counts_only_at_the_limit() -> None:
    """SQLite says "unable to open database file", without an errno: it is taken for running
    out only while the process has (almost) no descriptor left, checked in a child process
    whose limit is lowered (the test process keeps its own)."""
    hidden = LedgerWriteError.of(sqlite3.OperationalError("unable to open database file"))
    assert not out_of_descriptors(hidden, probe=True), "plenty of descriptors here"
    assert not out_of_descriptors(hidden), "without the probe only an errno counts"
    child = textwrap.dedent(
        """
        import os, resource, sqlite3
        from ca_server.descriptors import open_count, out_of_descriptors
        from ca_server.record.ledger.errors import LedgerWriteError
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_count() + 6, 4096))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        error = LedgerWriteError.of(sqlite3.OperationalError("unable to open database file"))
        print(out_of_descriptors(error, probe=True))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "True", result.stderr


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    child = textwrap.dedent(
        """
        import resource
        from ca_server.descriptors import raise_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 512))
        print(raise_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "(512, 512) (512, 512)", result.stderr
    soft, hard = raise_limit()  # here: already as high as allowed, nothing changes
    assert soft >= 1024 or soft == hard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_file_is_read_once_and_a_failed_reread_is_unavailable(tmp_path: Path) -> None:
    ca = TestCa.create(tmp_path / "ca")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(ca.issuer.jwks()))
    clock = Clock()
    source = JwksSource(jwks_file=jwks, clock=clock)
    source.load()
    jwks.unlink()  # the file cannot be read any more (as with no descriptor left)
    assert source.key_for(ca.issuer.kid), "the loaded key is kept"
    clock.now += REFRESH_COOLDOWN_S
    with pytest.raises(UpstreamUnavailable):
        source.key_for("rotated-kid")  # it may be in the file: re-reading it failed
    with pytest.raises(UpstreamUnavailable):
        source.key_for("another-kid")  # within the cooldown: still not known to be absent
    assert source.key_for(ca.issuer.kid)
    jwks.write_text(json.dumps(ca.issuer.jwks()))
    clock.now += REFRESH_COOLDOWN_S
    with pytest.raises(AuthenticationError, match="not among the issuer's signing keys"):
        source.key_for("made-up-kid")  # read again: now truly absent


def test_a_source_that_never_loaded_is_unavailable(tmp_path: Path) -> None:
    source = JwksSource(jwks_file=tmp_path / "missing.json")
    with pytest.raises(UpstreamUnavailable):
        source.load()
    for kid in ("some-kid", None):
        with pytest.raises(UpstreamUnavailable):
            source.key_for(kid)


TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1
   1: 0100007F:3A98 0200007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 205 1
   2: 0100007F:3A98 0200007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 201 1
   3: 0100007F:3A98 0100007F:D433 01 00000000:00000000 00:00000000 00000000     0        0 300 1
   4: 0100007F:1538 0200007F:D434 01 00000000:00000000 00:00000000 00000000     0        0 400 1
   5: 0100007F:D435 0100007F:3A98 01 00000000:00000000 00:00000000 00000000     0        0 500 1
"""
TCP6 = (
    "   0: 00000000000000000000000001000000:3A98 0000000000000000FFFF00000300000A:D436 01 "
    "00000000:00000000 00:00000000 00000000     0        0 600 1\n"
)


def test_the_tcp_table_gives_each_accepted_connection_its_peer() -> None:
    found = accepted([*TCP.splitlines(), TCP6], frozenset({0x3A98}))
    assert found == [
        Connection("127.0.0.2", 205),
        Connection("127.0.0.2", 201),
        Connection("127.0.0.1", 300),
        Connection("10.0.0.3", 600),  # an IPv4-mapped IPv6 peer is its IPv4 address
    ], "listening sockets, other ports and outgoing connections are left out"
    assert over_share(found, 1) == {"127.0.0.2": [Connection("127.0.0.2", 205)]}, "the newest"
    assert over_share(found, 2) == {}


def test_the_connection_cap_leaves_descriptors_for_the_worker() -> None:
    assert connection_cap(128, 30) == 66
    assert connection_cap(64, 60) == 16, "never below a floor"
    assert connection_cap(1 << 20, 40) > 1_000_000
