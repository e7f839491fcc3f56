"""CLI conventions (#14.1, #14.5, #14.9): version, completion, suggestions, tables, the
admin query parameters of `certs list`, the admin URL, /docs offline, declared dependencies."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ca_server.cli.admin_client import admin_base_url
from ca_server.cli.records import _filters, print_table
from certs.cli import build_parser, main
from certs.cli.completion import script
from certs.cli.output import table
from certs.values import InvalidValue
from tests.support.ca_process import REPO

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == "bulwark 0.1.0"


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["inspec"], "did you mean 'inspect'?"),
        (["certs", "lst"], "did you mean 'list'?"),
        (["certs", "list", "--namspace", "x"], "did you mean '--namespace'?"),
        (["agent", "run", "--secret-tll", "1h"], "did you mean '--secret-ttl'?"),
        (["ca", "serve", "--grpc-adr", "x"], "did you mean '--grpc-addr'?"),
    ],
)
def test_misspellings_get_a_suggestion(
    args: list[str], hint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["bulwark", *args])
    code, _, err = run_main(capsys, *args)
    assert code == 2 and err.strip().endswith(hint)


def test_bash_completion_completes_commands_flags_and_choices(tmp_path: Path) -> None:
    (tmp_path / "c.sh").write_text(script(build_parser(), "bash"))

    def complete(*words: str) -> list[str]:
        cmd = (f"source {tmp_path / 'c.sh'}; COMP_WORDS=(bulwark {' '.join(repr(w) for w in words)}); "
               f"COMP_CWORD={len(words)}; _bulwark; echo \"${{COMPREPLY[@]}}\"")  # fmt: skip
        return subprocess.run(
            ["bash", "-c", cmd], capture_output=True, text=True, check=True
        ).stdout.split()

    assert complete("cer") == ["cert", "certs"]
    assert "--issued-since" in complete("certs", "list", "--")
    assert complete("certs", "list", "-o", "") == ["table", "json", "yaml"]
    assert complete("completion", "") == ["bash", "zsh", "fish", "--help"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_get_a_script(shell: str) -> None:
    text = script(build_parser(), shell)
    assert "inspect" in text and "--issued-since" in text.replace(
        "-l issued-since", "--issued-since"
    )
    checker = shutil.which(shell)
    if checker:  # the shell itself checks the syntax where it is installed
        subprocess.run([checker, "-n"], input=text, text=True, check=True)


def test_tables_fit_100_columns_and_keep_the_serial() -> None:
    item = {
        "spiffe_id": "spiffe://cluster.local/ns/a-long-namespace-name/sa/a-long-service-account",
        "serial": "f" * 32, "seconds_left": 86399, "authenticator": "kubernetes-tokenreview",
    }  # fmt: skip
    out = io.StringIO()
    print_table([item], out)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 100 and "f" * 32 in lines[1] and "23h59m" in lines[1]
    shown = lines[1].split()[0]
    assert "…" in shown and shown.endswith("long-service-account")  # the middle goes
    assert table(("A", "B"), [("x", "y")]) == ["A  B", "x  y"]


def _list_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["certs", "list", *flags])


def test_issued_since_and_before_become_rfc3339_query_parameters() -> None:
    """#14.5: `--issued-since/--issued-before` take a duration ago or RFC 3339; the admin API
    gets `issued_since`/`issued_before` as RFC 3339 UTC (the server side lands with H2)."""
    params = _filters(_list_args("--issued-since", "2h", "--issued-before", "30m"), now=NOW)
    assert params["issued_since"] == "2026-11-30T10:00:00Z"
    assert params["issued_before"] == "2026-11-30T11:30:00Z"
    params = _filters(_list_args("--issued-since", "2026-11-29T09:00:00+01:00"), now=NOW)
    assert params == {"issued_since": "2026-11-29T08:00:00Z"}
    assert _filters(_list_args("--expiring-within", "1h30m"), now=NOW) == {
        "expiring_within": "5400"
    }
    with pytest.raises(InvalidValue, match="--issued-before must be an RFC 3339 time"):
        _filters(_list_args("--issued-before", "last week"), now=NOW)


@pytest.mark.parametrize(
    ("text", "base"),
    [
        ("127.0.0.1:15014", "http://127.0.0.1:15014"),
        ("http://127.0.0.1:15014/", "http://127.0.0.1:15014"),
        ("https://ca.example:8443/prefix", "https://ca.example:8443/prefix"),
        ("[::1]:15014", "http://[::1]:15014"),
    ],
)
def test_admin_url_without_a_scheme_means_http(text: str, base: str) -> None:
    """Defect #14.5: `--admin-url 127.0.0.1:15014` failed with `unknown url type`."""
    assert admin_base_url(text) == base


@pytest.mark.parametrize("text", ["127.0.0.1", "ftp://x:1", "http://", "localhost:0"])
def test_admin_url_mistakes_are_named(text: str) -> None:
    with pytest.raises(InvalidValue, match=r"^--admin-url \(env BULWARK_ADMIN_URL\) must be"):
        admin_base_url(text)


def test_unreachable_admin_api_suggests_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "certs", "list", "--admin-url", "127.0.0.1:1")
    assert code == 2
    assert err.strip().endswith("is the CA running? check --admin-url (env BULWARK_ADMIN_URL)")


def test_docs_need_no_internet_and_the_schema_stays() -> None:
    """#14.9: /docs loaded Swagger UI from a CDN; now it is off and /openapi.json kept."""
    from fastapi.testclient import TestClient

    from ca_server.admin.app import create_admin_app

    app = create_admin_app(metrics_dir=".", material=lambda: None, readiness=lambda: (True, "ok"))
    client = TestClient(app)
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "Bulwark CA admin API"


def test_every_imported_package_is_declared() -> None:
    """#14.9: `httpx2` (ca_server/kube) arrived only through lightkube; deptry now checks."""
    deptry = REPO / ".venv/bin/deptry"
    result = subprocess.run(
        [str(deptry), "ca_server", "certs", "agent", "protos"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deptry" in (REPO / "Makefile").read_text().split("lint:")[1].split("\n\n")[0]


def test_license_is_an_spdx_expression() -> None:
    """#14.9: a TOML-table license made setuptools print its deprecation box three times."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["build-system"]["requires"] == ["setuptools>=77"]
