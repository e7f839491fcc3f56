"""Agent hardening pieces in isolation: bounded reads, socket modes, log lines, Workload API stubs."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.endpoints.resources import check_name
from agent.errors import ConfigError, UnknownResource
from agent.files.watch import UnusableFile, read_regular_file
from agent.logs import JsonFormatter, LogBudget, TextFormatter, printable
from tests.support.agent import agent_config, running_agent
from tests.support.agent_process import REPO
from tests.support.ca_process import RunningCa, tree_env


def test_reader_takes_only_small_regular_files(tmp_path: Path) -> None:
    """#12: /dev/zero was read whole; a FIFO blocked; now both are refused at once."""
    ok = tmp_path / "ok.pem"
    ok.write_bytes(b"x" * 100)
    assert read_regular_file(ok, 100) == b"x" * 100
    with pytest.raises(UnusableFile, match="larger than 99 bytes"):
        read_regular_file(ok, 99)
    with pytest.raises(UnusableFile, match="not a regular file"):
        read_regular_file(Path("/dev/zero"), 1 << 20)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnusableFile, match="not a regular file"):
        read_regular_file(fifo, 1 << 20)  # returns at once: opened non-blocking
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "absent", 10)


def test_check_name_only_checks() -> None:
    """#11.9: check_name started file watches; now it is a pure check."""
    assert check_name("default") is False
    assert check_name("ROOTCA") is False
    assert check_name("file-root:/etc/ssl/certs/ca.pem") is True
    with pytest.raises(UnknownResource):
        check_name("file-cert:/only-a-cert.pem")
    with pytest.raises(UnknownResource):
        check_name("spiffe://cluster.local/ns/x/sa/y")


def test_printable_escapes_control_characters() -> None:
    assert printable("a\nb\r\x1b[2J\u2028") == "a\\nb\\r\\x1b[2J\\x2028"
    assert printable("x" * 1000).startswith("x" * 256) and "1000 chars" in printable("x" * 1000)


def test_formatters_write_one_line_per_event() -> None:
    """#12.6: a newline in a client's value cannot start a new log line, in text or JSON."""
    record = logging.LogRecord(
        "agent.endpoints.sds", logging.WARNING, __file__, 1, "NACK: %s", ("a\nb",), None
    )
    text = TextFormatter().format(record)
    assert "\n" not in text and "a\\nb" in text
    event = json.loads(JsonFormatter().format(record))
    assert event["msg"] == "NACK: a\nb" and event["level"] == "warning"
    assert "\n" not in JsonFormatter().format(record)


def test_socket_mode_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="0600 or 0660"):
        AgentConfig(socket_mode=0o666)
    with pytest.raises(ConfigError, match="0600 or 0660"):
        AgentConfig(socket_mode=0o400)
    config = AgentConfig.from_env({"BULWARK_SOCKET_MODE": "0660", "BULWARK_SOCKET_GROUP": "0"})
    assert config.socket_mode == 0o660 and config.socket_group == "0"
    with pytest.raises(ConfigError, match="octal"):
        AgentConfig.from_env({"BULWARK_SOCKET_MODE": "rw-"})


async def test_socket_and_directories_are_owner_only_whatever_the_umask(
    shared_ca: RunningCa, work: Path
) -> None:
    """#12: the socket and its directory followed the umask (0777/0755 under umask 000)."""
    socket = work / "a" / "b" / "socket"
    old = os.umask(0)
    try:
        async with running_agent(agent_config(shared_ca, work, socket_path=socket)):
            assert stat.S_IMODE(os.stat(work / "a").st_mode) == 0o700
            assert stat.S_IMODE(os.stat(work / "a" / "b").st_mode) == 0o700
            assert stat.S_IMODE(os.lstat(socket).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(str(socket) + ".lock").st_mode) == 0o600
        shared = work / "shared" / "socket"
        config = agent_config(
            shared_ca, work, socket_path=shared, socket_mode=0o660, socket_group=str(os.getgid())
        )
        async with running_agent(config):
            assert stat.S_IMODE(os.stat(work / "shared").st_mode) == 0o710
            assert stat.S_IMODE(os.lstat(shared).st_mode) == 0o660
            assert os.lstat(shared).st_gid == os.getgid()
    finally:
        os.umask(old)


def _agent_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**tree_env(os.environ), "BULWARK_AGENT_STATUS_ADDR": ""},
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--log-level", "verbose"), "--log-level"),
        (("--log-format", "xml"), "--log-format"),
        (("--socket-mode", "0777"), "0600 or 0660"),
        (("--socket-group", "no-such-group-here"), "no-such-group-here"),
        (("--file-resource-max-bytes", "lots"), "--file-resource-max-bytes"),
    ],
)
def test_bad_agent_settings_exit_2_with_a_message(
    args: tuple[str, ...], fragment: str, work: Path
) -> None:
    """#14.6: `--log-level verbose` crashed with `ValueError: Unknown level`."""
    result = _agent_cli(*args, cwd=work)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_json_log_format_writes_json_lines(work: Path) -> None:
    """#14.6: `--log-format json` for the agent: every line one JSON object."""
    blocker = work / "sock"
    blocker.write_text("a regular file where the socket should go")
    result = _agent_cli("--log-format", "json", "--socket", str(blocker), cwd=work)
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert events and all({"time", "level", "logger", "msg"} <= set(e) for e in events)
    assert any(e["level"] == "error" and "is not a socket" in e["msg"] for e in events)


def test_workload_api_stubs_are_ours_and_wire_compatible() -> None:
    """#11.9: the agent loaded spiffe/_proto/workload_pb2.py by file path from another package."""
    code = (
        "import sys; import agent.endpoints.workload_api, agent.cli.status; "
        "from agent.endpoints.workload_proto import workload_pb2; m = workload_pb2(); "
        "print(m.__name__, any(k == 'spiffe' or k.startswith('spiffe.') for k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    assert out == ["protos.spiffe.workload.workload_pb2", "False"]

    from spiffe._proto import workload_pb2 as theirs

    from agent.endpoints.workload_proto import workload_pb2

    ours = workload_pb2()
    for name, message in theirs.DESCRIPTOR.message_types_by_name.items():
        mine = ours.DESCRIPTOR.message_types_by_name[name]
        assert [
            (f.name, f.number, f.type, f.message_type and f.message_type.name)
            for f in message.fields
        ] == [
            (f.name, f.number, f.type, f.message_type and f.message_type.name) for f in mine.fields
        ], name
    svid = ours.X509SVIDResponse(svids=[ours.X509SVID(spiffe_id="spiffe://td/x", bundle=b"\x01")])
    parsed = theirs.X509SVIDResponse.FromString(svid.SerializeToString())
    assert parsed.svids[0].spiffe_id == "spiffe://td/x"
    their_service = theirs.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    my_service = ours.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    assert [m.name for m in their_service.methods] == [m.name for m in my_service.methods]


def test_log_budget_drops_a_flood_and_says_how_many() -> None:
    """#12.6: lines a local client triggers are bounded; the next allowed line counts the rest."""
    now = [0.0]
    budget = LogBudget(limit=3, window_s=10.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 10.0
    assert budget.take() == 2
    assert budget.take() == 0
