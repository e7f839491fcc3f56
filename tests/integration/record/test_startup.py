"""A CA given a record it cannot open refuses to start, saying why, without the password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ca_server.record.ledger import parse_record_url
from tests.support.ca_process import REPO, serve_once


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("mysql://db/x", "--record: record URL scheme 'mysql' is not supported"),
        (
            "postgresql://ca:hunter2@127.0.0.1:1/record",
            "cannot open the issuance record postgresql://ca:***@127.0.0.1:1/record",
        ),
    ],
)
def test_unusable_record_is_a_startup_error(tmp_path: Path, record: str, message: str) -> None:
    result = serve_once(tmp_path / "ca", "--record", record)
    assert result.returncode == 2
    assert message in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_group_commit_batch_must_be_positive(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ca_server",
            "--data-dir",
            str(tmp_path / "ca"),
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--record-max-batch",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2 and "--record-max-batch must be at least 1" in result.stderr


def test_redaction_and_url_forms() -> None:
    assert parse_record_url("/var/lib/bulwark/record.db").target == "/var/lib/bulwark/record.db"
    assert parse_record_url("sqlite:///abs/r.db").target == "/abs/r.db"
    assert parse_record_url("sqlite:rel.db").target == "rel.db"
    pg = parse_record_url("postgres://u:p@h:5432/d?sslmode=require")
    assert (
        pg.dialect == "postgresql" and pg.redacted() == "postgres://u:***@h:5432/d?sslmode=require"
    )
