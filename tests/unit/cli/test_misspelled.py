"""Issue 22: a misspelled flag is answered by the subcommand it was given to, with that
subcommand's usage and a did-you-mean, also when the misspelling leaves a required flag out
(README promises `did you mean '--namespace'?` for `--namesapce`)."""

from __future__ import annotations

import pytest

from certs.cli import main


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "command", "suggested"),
    [
        (("token", "mint", "--namesapce", "demo", "-s", "web"), "token mint", "--namespace"),
        (
            ("cert", "request", "--token-file", "t", "--namesapce", "demo"),
            "cert request",
            "--namespace",
        ),
        (("certs", "list", "--namesapce", "demo"), "certs list", "--namespace"),
        (("ca", "serve", "--grpc-adr", "127.0.0.1:1"), "ca serve", "--grpc-addr"),
        (("agent", "run", "--socket-pth", "x"), "agent run", "--socket"),
    ],
    ids=["required-flag-misspelled", "cert-request", "certs-list", "ca-serve", "agent-run"],
)
def test_a_misspelled_flag_gets_the_subcommands_usage_and_a_suggestion(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], command: str, suggested: str
) -> None:
    err = refused(capsys, *argv)
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: bulwark {command} "), err
    assert lines[-1].startswith(f"bulwark {command}: error: "), err
    assert lines[-1].endswith(f"did you mean {suggested!r}?"), err


def test_an_unknown_flag_with_no_near_name_is_named_by_its_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(capsys, "token", "mint", "-n", "a", "-s", "b", "--zzzz")
    assert (
        err.strip().splitlines()[-1] == "bulwark token mint: error: unrecognized arguments: --zzzz"
    )


def test_a_misspelled_command_still_gets_the_top_level_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(capsys, "tokn", "mint")
    assert err.startswith("usage: bulwark [-h]") and "did you mean 'token'?" in err
