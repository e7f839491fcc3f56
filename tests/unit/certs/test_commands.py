"""The `bulwark` subcommands come from the entry points of group `bulwark.commands`.

Every declared command loads and adds exactly the command it is named for; `bulwark --help`
lists them all in the order users know; running one command loads only its package, so
`bulwark agent ...` never imports the CA.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from certs.cli import HELP_ORDER, build_parser, commands, load, main
from certs.cli.parser import BulwarkParser, subparsers_of

REPO = Path(__file__).resolve().parents[3]


def test_the_declared_commands_are_the_known_ones_in_help_order() -> None:
    assert [ep.name for ep in commands()] == list(HELP_ORDER)


@pytest.mark.parametrize("command", commands(), ids=lambda ep: ep.name)
def test_each_declared_command_loads_and_adds_itself(command: object) -> None:
    register = load(command)  # type: ignore[arg-type]
    assert register is not None, f"{command}: its package is installed, it must load"
    parser = BulwarkParser(prog="bulwark")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    assert list(subparsers_of(parser)) == [command.name]  # type: ignore[attr-defined]


def test_help_lists_every_command_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = [
        line.split()[0]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("    ") and not line.startswith("     ")
    ]
    assert listed == list(HELP_ORDER)


def test_a_named_command_builds_only_that_command() -> None:
    assert list(subparsers_of(build_parser(["agent", "status"]))) == ["agent"]
    assert list(subparsers_of(build_parser(["ca", "serve"]))) == ["ca"]
    assert list(subparsers_of(build_parser(["--help"]))) == list(HELP_ORDER)
    assert list(subparsers_of(build_parser(["agnet"]))) == list(HELP_ORDER)  # did you mean


def test_a_mistyped_command_still_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["agnet", "run"])
    assert done.value.code == 2
    assert "did you mean 'agent'?" in capsys.readouterr().err


def test_the_agent_command_never_imports_the_ca(tmp_path: Path) -> None:
    """A real process: `bulwark agent status` on a missing socket, then the loaded modules."""
    code = (
        "import sys\n"
        "from certs.cli import main\n"
        f"status = main(['agent', 'status', '--socket', {str(tmp_path / 'none')!r}])\n"
        "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'ca_server', 'agent'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "1 ['agent']", result.stdout + result.stderr


def test_a_missing_package_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry point whose package is not installed (a slimmer build) is left out; a
    package that is there but cannot import what it needs is a bug and raises."""
    assert load(EntryPoint(name="a", value="no_such_package.cli:register", group="x")) is None
    assert load(EntryPoint(name="b", value="certs.cli.no_such_module:register", group="x")) is None
    (tmp_path / "needs_more.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        load(EntryPoint(name="c", value="needs_more:register", group="x"))


def test_without_installed_commands_bulwark_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("certs.cli.COMMAND_GROUP", "bulwark.no-such-group")
    assert main(["--help"]) == 2
    assert "pip install -e ." in capsys.readouterr().err


def test_parsing_still_works_for_every_command() -> None:
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    args = parser.parse_args(["completion", "bash"])
    assert args.command == "completion"
