"""CA log lines: escaped client text, JSON format, and refusal lines that a flood cannot multiply."""

from __future__ import annotations

import json
import logging

import pytest

from ca_server.identity import Caller
from ca_server.logs import CaEventLog, JsonFormatter, TokenBucket, escape, formatter
from certs.spiffe_id import SpiffeId


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("a\nINFO forged line", "a\\x0aINFO forged line"),
        ("cr\r\x1b[31m", "cr\\x0d\\x1b[31m"),
        ("nel\x85", "nel\\x85"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_escape_leaves_no_control_character(raw: str, shown: str) -> None:
    """Covers #14.6/#12.6: client text in a log line is escaped, one event per line."""
    assert escape(raw) == shown


def test_escape_cuts_long_values() -> None:
    assert escape("k" * 6000, limit=40) == "k" * 40 + "..."


def refusal(
    events: CaEventLog, reason: str = "authentication", peer: str = "ipv4:1.2.3.4:5"
) -> None:
    events.refused(
        code="UNAUTHENTICATED", reason=reason, message="no credential", caller=None, peer=peer
    )


def test_refusal_lines_are_rate_limited_with_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    """Covers #14.6: a flood of refusals writes `burst` lines, then one summary line
    "N refusal lines suppressed" before the next line the rate allows."""
    clock = FakeClock()
    events = CaEventLog(refusals_per_s=1.0, burst=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="ca_server.events"):
        for _ in range(1000):
            refusal(events)
        refusal(events, reason="csr_policy")  # another reason has its own bucket
        assert len(caplog.records) == 6
        clock.now += 1.0
        refusal(events)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        messages[-2].startswith("995 refusal lines suppressed")
        and "reason=authentication" in messages[-2]
    )
    assert messages[-1].startswith("request refused")
    assert len(messages) == 8


def test_flush_reports_what_was_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    events = CaEventLog(refusals_per_s=0.0, burst=1, clock=FakeClock())
    with caplog.at_level(logging.INFO, logger="ca_server.events"):
        for _ in range(4):
            refusal(events)
        events.flush()
    assert caplog.records[-1].getMessage().startswith("3 refusal lines suppressed")


def test_refusal_line_names_code_reason_caller_and_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caller = Caller(
        spiffe_id=SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/frontend"),
        namespace="demo",
        service_account="frontend",
        authenticator="jwt",
    )
    events = CaEventLog()
    with caplog.at_level(logging.INFO, logger="ca_server.events"):
        events.refused(
            code="PERMISSION_DENIED",
            reason="csr_policy",
            message="CSR asks for x\nforged",
            caller=caller,
            peer="ipv4:10.1.2.3:4567",
        )
    [line] = [r.getMessage() for r in caplog.records]
    for part in (
        "code=PERMISSION_DENIED",
        "reason=csr_policy",
        "caller=spiffe://cluster.local/ns/demo/sa/frontend",
        "peer=ipv4:10.1.2.3:4567",
        "x\\x0aforged",
    ):
        assert part in line, line
    assert "\n" not in line


def test_json_formatter_writes_one_object_per_line_with_the_event_fields() -> None:
    record = logging.LogRecord("ca_server.events", logging.INFO, __file__, 1, "%s", ("x",), None)
    record.event = "request refused"
    record.fields = {"code": "UNAUTHENTICATED", "peer": "ipv4:1.2.3.4:5"}
    line = JsonFormatter(process="worker-0").format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "request refused" and data["code"] == "UNAUTHENTICATED"
    assert data["process"] == "worker-0" and data["level"] == "INFO"
    assert data["time"].endswith("+00:00")


def test_json_formatter_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(formatter("json").format(record))
    assert "ValueError: boom" in data["exception"]


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        formatter("xml")


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert bucket.take() and not bucket.take()


@pytest.mark.parametrize(
    ("level", "request_lines_shown"), [(logging.INFO, False), (logging.DEBUG, True)]
)
def test_kubernetes_request_lines_only_at_debug(level: int, request_lines_shown: bool) -> None:
    from ca_server.logs import configure

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure(level)
        assert logging.getLogger("httpx2").isEnabledFor(logging.INFO) is request_lines_shown
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("httpx2").setLevel(logging.NOTSET)
