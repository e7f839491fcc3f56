"""Issue #11.6: one table of typed values through `ca serve`, `agent run` and `bulwark certs`.

Each value is parsed in-process by the command's real parser and config builder; every
command must give the same answer (the same duration, the same host and port, the same
boolean) or refuse it with the same message.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli.commands import config_from
from agent.errors import ConfigError as AgentConfigError
from ca_server.cli.admin_client import admin_base_url
from ca_server.cli.records import _filters
from ca_server.cli.serve import config_from_args
from ca_server.config import parse_hostport
from ca_server.errors import ConfigError as CaConfigError
from certs.cli import build_parser
from certs.values import parse_host_port

ERRORS = (ValueError, CaConfigError, AgentConfigError)
Answer = tuple[str, Any]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def answer(produce: Callable[[], Any]) -> Answer:
    try:
        return ("ok", produce())
    except ERRORS as exc:
        return ("error", str(exc))


def ca_serve(tmp: Path, *flags: str) -> Any:
    return config_from_args(parse(["ca", "serve", "--data-dir", str(tmp), *flags]))


def agent_run(*flags: str, env: dict[str, str] | None = None) -> Any:
    return config_from(parse(["agent", "run", *flags]), env or {})


# ------------------------------------------------------------------------------ durations

DURATIONS = [
    ("1h30m", timedelta(minutes=90)),
    ("500ms", timedelta(milliseconds=500)),
    ("1.5h", timedelta(minutes=90)),
    ("300us", timedelta(microseconds=300)),
    ("7d", timedelta(days=7)),
    ("2w", timedelta(weeks=2)),
    ("90", timedelta(seconds=90)),
    ("2.5", timedelta(seconds=2.5)),
    ("1h0m0s", timedelta(hours=1)),
    ("soon", None),
    ("1H", None),
    ("-1h", None),
    ("1h 30m", None),
    ("", None),
    ("1d2x", None),
]


def duration_answers(tmp: Path, text: str) -> dict[str, Answer]:
    def certs_list() -> timedelta:
        args = parse(["certs", "list", f"--expiring-within={text}"])
        return timedelta(seconds=float(_filters(args)["expiring_within"]))

    return {
        "ca serve --material-check-interval": answer(
            lambda: ca_serve(tmp, f"--material-check-interval={text}").material_check_interval
        ),
        "agent run --file-poll-interval": answer(
            lambda: agent_run(f"--file-poll-interval={text}").file_poll_interval
        ),
        "agent SECRET_TTL": answer(lambda: agent_run(env={"SECRET_TTL": text}).secret_ttl)
        if text
        else ("error", "must be a duration"),  # an empty variable means "unset" (Istio)
        "certs list --expiring-within": answer(certs_list),
    }


@pytest.mark.parametrize(("text", "expected"), DURATIONS)
def test_durations_mean_the_same_everywhere(
    tmp_path: Path, text: str, expected: timedelta | None
) -> None:
    answers = duration_answers(tmp_path, text)
    if expected is None:
        assert {k: a[0] for k, a in answers.items()} == dict.fromkeys(answers, "error")
        assert all("must be a" in a[1] and "duration" in a[1] for a in answers.values()), answers
    else:
        assert answers == dict.fromkeys(answers, ("ok", expected))


# ------------------------------------------------------------------------------ host:port

HOST_PORTS = [
    ("127.0.0.1:15012", ("127.0.0.1", 15012)),
    ("[::1]:8080", ("::1", 8080)),
    ("localhost:65535", ("localhost", 65535)),
    ("istiod.istio-system.svc:15012", ("istiod.istio-system.svc", 15012)),
    ("nonsense", None),
    ("host:65536", None),
    (":80", None),
    ("::1:80", None),
    ("[::1]", None),
    ("host:http", None),
]


def host_port_answers(tmp: Path, text: str) -> dict[str, Answer]:
    def certs_admin_url() -> tuple[str, int]:
        url = urllib.parse.urlsplit(admin_base_url(text))
        return parse_host_port(url.netloc, "netloc")

    return {
        "ca serve --grpc-addr": answer(
            lambda: parse_hostport(ca_serve(tmp, "--grpc-addr", text).grpc_addr, what="x")
        ),
        "agent run --status-addr": answer(
            lambda: parse_host_port(agent_run("--status-addr", text).status_addr, "x")
        ),
        "agent run --ca-addr": answer(
            lambda: parse_host_port(agent_run("--ca-addr", text).ca_addr, "x")
        ),
        "certs --admin-url": answer(certs_admin_url),
    }


@pytest.mark.parametrize(("text", "expected"), HOST_PORTS)
def test_host_port_means_the_same_everywhere(
    tmp_path: Path, text: str, expected: tuple[str, int] | None
) -> None:
    answers = host_port_answers(tmp_path, text)
    if expected is None:
        assert {k: a[0] for k, a in answers.items()} == dict.fromkeys(answers, "error")
        assert all("must be HOST:PORT with a port" in a[1] for a in answers.values()), answers
    else:
        assert answers == dict.fromkeys(answers, ("ok", expected))


# ------------------------------------------------------------------------------ booleans

BOOLEANS = [
    *[(w, True) for w in ("1", "t", "T", "TRUE", "true", "True")],
    *[(w, False) for w in ("0", "f", "F", "FALSE", "false", "False")],
    *[(w, None) for w in ("yes", "no", "on", "2", "tRuE", "enabled")],
]


def bool_answers(tmp: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Answer]:
    def ca_env() -> bool:
        monkeypatch.setenv("BULWARK_ALLOW_ED25519", text)
        try:
            return bool(ca_serve(tmp).allow_ed25519)
        finally:
            monkeypatch.delenv("BULWARK_ALLOW_ED25519")

    return {
        "ca serve BULWARK_ALLOW_ED25519": answer(ca_env),
        "agent run --file-mounted-certs": answer(
            lambda: agent_run("--file-mounted-certs", text).file_mounted_certs
        ),
        "agent FILE_MOUNTED_CERTS": answer(
            lambda: agent_run(env={"FILE_MOUNTED_CERTS": text}).file_mounted_certs
        ),
    }


@pytest.mark.parametrize(("text", "expected"), BOOLEANS)
def test_booleans_mean_the_same_everywhere(
    tmp_path: Path, text: str, expected: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage is an error everywhere; before, BULWARK_ALLOW_ED25519=yes was silently false."""
    answers = bool_answers(tmp_path, text, monkeypatch)
    if expected is None:
        assert {k: a[0] for k, a in answers.items()} == dict.fromkeys(answers, "error")
        assert all("must be a boolean (1, t, T, TRUE" in a[1] for a in answers.values()), answers
    else:
        assert answers == dict.fromkeys(answers, ("ok", expected))
