"""Issue #14.2: every `bulwark` subcommand x `--help` and a bad value; no traceback, exit 2.

Runs `certs.cli.main` in-process (an uncaught exception fails the test, as a traceback
would) and, for startup errors, the installed `bulwark` script in a process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from certs.cli import build_parser, main
from certs.cli.parser import subparsers_of, walk
from tests.support.ca_process import REPO, tree_env

BULWARK = str(REPO / ".venv/bin/bulwark")
PARSER = build_parser()
ALL_PATHS = [path for path, _ in walk(PARSER) if path]
LEAVES = [path for path, node in walk(PARSER) if path and not subparsers_of(node)]


def test_the_matrix_covers_every_subcommand() -> None:
    assert {" ".join(p) for p in LEAVES} == set(BAD_VALUES)


@pytest.mark.parametrize("path", ALL_PATHS, ids=" ".join)
def test_help_has_a_description_and_shows_defaults(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect #14.1: `token`, `agent run`, `certs list` ... had no description."""
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: bulwark " + " ".join(path))
    node = dict(walk(PARSER))[path]
    flat = " ".join(out.split())
    assert node.description and " ".join(node.description.split())[:40] in flat
    for action in node._actions:
        default = action.default
        if (
            action.option_strings
            and isinstance(default, str)
            and default not in ("", "==SUPPRESS==")
        ):
            assert f"default: {default}" in flat, action.option_strings


def _bad_values(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "token").write_text("x")
    return {
        "ca serve": (["--data-dir", str(tmp), "--grpc-addr", "nonsense"], "--grpc-addr"),
        "token mint": (["-n", "a", "-s", "b", "--data-dir", str(tmp), "--ttl", "soon"], "--ttl"),
        "inspect": ([str(tmp / "missing.pem")], "missing.pem"),
        "cert request": (
            ["--token-file", str(tmp / "token"), "--root", "r.pem", "--ca-addr", "host:99999"],
            "--ca-addr",
        ),
        "certs list": (["--expiring-within", "1H"], "--expiring-within"),
        "certs show": (["ab", "--admin-url", "ftp://h:1"], "--admin-url"),
        "certs expiring": (["--within", "soon"], "--within must be a duration"),
        "certs verify-log": (["--record", "nosuch://x"], "record URL scheme"),
        "agent run": (["--secret-ttl", "forever"], "--secret-ttl"),
        "agent status": (["-o", "xml"], "--output"),
        "completion": (["tcsh"], "shell"),
        "ca rotate status": (["--admin-url", "ftp://h:1"], "--admin-url"),
        "ca rotate prepare": (["--admin-url", "h:99999"], "--admin-url"),
        "ca rotate activate": (["--force", "-o", "xml"], "--output"),
        "ca rotate retire": (["--admin-url", "h:0"], "--admin-url"),
        "ca intermediate csr": (["--key-dir", str(tmp / "token")], "token"),
        "ca intermediate install": (
            ["--key-dir", str(tmp), "--cert", "c", "--root", "r", "--cacerts-dir", "d"],
            "does not exist",
        ),
        "ca hsm init": (["--ca-key", "pkcs11:token=t;object=o;colour=red"], "'colour'"),
        "ca hsm show": (["--ca-key", "/etc/ca-key.pem"], "--ca-key takes a PKCS#11 URI"),
        "kube create-remote-secret": (["--wait", "soon"], "--wait"),
    }


BAD_VALUES = {
    "ca serve", "token mint", "inspect", "cert request", "certs list", "certs show",
    "certs expiring", "certs verify-log", "agent run", "agent status", "completion",
    "ca rotate status", "ca rotate prepare", "ca rotate activate", "ca rotate retire",
    "ca intermediate csr", "ca intermediate install", "ca hsm init", "ca hsm show",
    "kube create-remote-secret",
}  # fmt: skip


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_a_bad_value_is_one_line_naming_it(
    path: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, names = _bad_values(tmp_path)[" ".join(path)]
    try:
        code = main([*path, *argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert lines[-1].startswith("bulwark") and names in lines[-1], err
    if not lines[0].startswith("usage:"):
        assert len(lines) == 1, err


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BULWARK, *args], cwd=cwd, env=tree_env(env or {"PATH": "/usr/bin:/bin"}),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


SERVE = ("ca", "serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
         "--mtls-grpc-addr", "", "--workers", "1")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ((*SERVE, "--data-dir", "afile"), {}, "afile exists but is not a directory"),
        ((*SERVE, "--data-dir", "afile/sub"), {}, "a parent of it is not a directory"),
        (("token", "mint", "-n", "a", "-s", "b", "--data-dir", "afile"), {}, "check --data-dir"),
        (("token", "mint", "-n", "a", "-s", "b", "--audience", "X", "--init"), {}, None),
        (("agent", "run", "--log-level", "verbose"), {}, "'verbose' is not a log level"),
        (("agent", "run"), {"BULWARK_LOG_LEVEL": "verbose"}, "'verbose' is not a log level"),
        (SERVE, {"BULWARK_ALLOW_ED25519": "yes"}, "BULWARK_ALLOW_ED25519 must be a boolean"),
        (("agent", "run"), {"FILE_MOUNTED_CERTS": "maybe"}, "FILE_MOUNTED_CERTS must be a boolean"),
        (
            ("agent", "run", "--socket", "afile/sock", "--status-addr", "127.0.0.1:0"),
            {},
            "afile/sock.lock: a file is in the way where a directory is needed (check --socket)",
        ),
    ],
    ids=[
        "data-dir-file",
        "data-dir-under-file",
        "mint-data-dir",
        "mint-audience",
        "agent-level",
        "agent-level-env",
        "ca-bool-env",
        "agent-bool-env",
        "agent-socket-dir-file",
    ],
)
def test_startup_errors_are_one_line_in_a_real_process(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], needle: str | None
) -> None:
    """Defects #14: tracebacks for a data dir that is a file, `--log-level verbose`, a socket
    directory that is a file, and `token mint --audience X` (AttributeError: 'str' object has
    no attribute 'append')."""
    (tmp_path / "afile").write_text("")
    result = run(*args, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env})
    assert "Traceback" not in result.stderr, result.stderr
    if needle is None:  # the audience case must now work
        assert result.returncode == 0 and result.stdout.count(".") == 2, result.stderr
        return
    assert result.returncode == 2 and needle in result.stderr.splitlines()[-1], result.stderr
