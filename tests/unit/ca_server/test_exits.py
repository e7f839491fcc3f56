"""How the CA's commands end: one line per failure, exit 2, decided in `certs.cli.exits`."""

from __future__ import annotations

import errno

import pytest

from ca_server.cli.serve import startup_errors
from ca_server.errors import ConfigError
from ca_server.record.ledger.integrity import RecordDamaged
from certs.cli.exits import EXIT_ERROR, fail, failure_line
from certs.errors import InvalidSpiffeId


@pytest.mark.parametrize(
    ("exc", "fix", "line"),
    [
        (ConfigError("--grpc-addr must be\n   HOST:PORT"), None, "--grpc-addr must be HOST:PORT"),
        (PermissionError(errno.EACCES, "Permission denied", "/d/ca"), None,
         "cannot use /d/ca: Permission denied"),
        (FileExistsError(errno.EEXIST, "File exists", "/d/x"), "check --data-dir",
         "cannot use /d/x: a file is in the way where a directory is needed (check --data-dir)"),
        (OSError("no filename here"), "check --data-dir", "no filename here"),
        (ValueError(""), None, "ValueError"),
    ],
)  # fmt: skip
def test_each_failure_is_one_line(exc: BaseException, fix: str | None, line: str) -> None:
    assert failure_line(exc, fix) == line


def test_fail_prints_the_command_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert fail("ca serve", ConfigError("bad --x")) == EXIT_ERROR == 2
    assert capsys.readouterr().err == "bulwark ca serve: bad --x\n"


def test_startup_errors_cover_the_typed_refusals() -> None:
    caught = startup_errors()
    for exc in (ConfigError("x"), RecordDamaged("x"), InvalidSpiffeId("x"), OSError("x")):
        assert isinstance(exc, caught)
    assert not isinstance(RuntimeError("a bug"), caught)  # a bug keeps its traceback
