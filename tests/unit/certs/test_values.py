"""`certs.values`: Go's duration grammar (+ d, w), host:port, booleans, one message style."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certs.values import (
    InvalidValue,
    duration_like,
    exact_duration,
    format_duration,
    format_seconds,
    parse_bool,
    parse_duration,
    parse_host_port,
    parse_time_or_ago,
    time_left,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("300us", timedelta(microseconds=300)),
        ("300µs", timedelta(microseconds=300)),
        ("300μs", timedelta(microseconds=300)),
        ("1000ns", timedelta(microseconds=1)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("1h0m0s", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        ("1w2d3h", timedelta(days=9, hours=3)),
        ("+5m", timedelta(minutes=5)),
        ("0", timedelta(0)),
        ("90", timedelta(seconds=90)),
        ("1.5", timedelta(seconds=1.5)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_go_durations_with_days_and_weeks(text: str, expected: timedelta) -> None:
    """Defect #11.6: `1h30m` failed for `ca serve`, `7d` for the agent, `500ms` for both CLIs."""
    assert parse_duration(text, "--x") == expected


@pytest.mark.parametrize(
    "text",
    ["", "h", "1", "1x", "1H", "1hm", "1h 30m", "-1h", "1.2.3s", ".s", "1e3s", "soon", "5 m"],
)
def test_bad_durations_name_the_setting_and_the_grammar(text: str) -> None:
    if text == "1":
        assert parse_duration(text, "--x") == timedelta(seconds=1)  # plain seconds
        return
    with pytest.raises(InvalidValue) as err:
        parse_duration(text, "--x")
    assert str(err.value).startswith("--x must be a ") and str(err.value).endswith(f"got {text!r}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:15012", ("127.0.0.1", 15012)),
        ("istiod.istio-system.svc:15012", ("istiod.istio-system.svc", 15012)),
        ("[::1]:8080", ("::1", 8080)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, "--addr") == expected


@pytest.mark.parametrize(
    "text",
    [
        "nonsense",
        "host",
        ":80",
        "host:",
        "host:65536",
        "host:-1",
        "host:http",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[]:80",
        "[host]:80",
        "host:\uff18\uff10",
        "a:b:c",
    ],
)
def test_bad_host_port(text: str) -> None:
    """Defect #11.6: the agent accepted `:80` and the CA `host:99999`."""
    with pytest.raises(InvalidValue, match=r"^--addr must be HOST:PORT with a port 0-65535"):
        parse_host_port(text, "--addr")


def test_port_zero_only_where_it_means_any_port() -> None:
    with pytest.raises(InvalidValue, match="port 1-65535"):
        parse_host_port("127.0.0.1:0", "--connect", allow_port_zero=False)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_true_words(text: str) -> None:
    assert parse_bool(text, "X") is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_false_words(text: str) -> None:
    assert parse_bool(text, "X") is False


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "tRUE", "2", "", "enabled"])
def test_garbage_is_an_error_never_false(text: str) -> None:
    """Defect #11.6: BULWARK_ALLOW_ED25519=yes (or any garbage) was silently false."""
    with pytest.raises(InvalidValue, match=r"^X must be a boolean \(1, t, T, TRUE"):
        parse_bool(text, "X")


def test_times_ago_or_rfc3339() -> None:
    assert parse_time_or_ago("2h", "--since", now=NOW) == NOW - timedelta(hours=2)
    assert parse_time_or_ago("2026-11-29T10:00:00Z", "--since", now=NOW) == datetime(
        2026, 11, 29, 10, tzinfo=UTC
    )
    assert parse_time_or_ago("2026-11-29T12:00:00+02:00", "--since", now=NOW) == datetime(
        2026, 11, 29, 10, tzinfo=UTC
    )
    for bad in ("2026-11-29", "2026-11-29T10:00:00", "yesterday"):
        with pytest.raises(InvalidValue, match="RFC 3339"):
            parse_time_or_ago(bad, "--since", now=NOW)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86399, "23h59m"),
        (3 * 86400 + 7200, "3d2h"),
        (86400, "1d"),
        (3600, "1h"),
        (330, "5m30s"),
        (42, "42s"),
        (0, "0s"),
        (-3720, "-1h2m"),
        (-5, "-5s"),
    ],
)
def test_one_time_left_format(seconds: int, text: str) -> None:
    """Defect #14.1: time left was printed five ways; one helper now, parseable back."""
    assert time_left(seconds) == format_duration(seconds) == text
    shown = parse_duration(text.lstrip("-"), "x")  # rounded down to its two largest units
    assert timedelta(0) <= timedelta(seconds=abs(seconds)) - shown < timedelta(hours=1)


def test_seconds_for_the_admin_api() -> None:
    assert format_seconds(timedelta(hours=2)) == "7200"
    assert format_seconds(timedelta(milliseconds=500)) == "0.5"


@pytest.mark.parametrize(
    ("seconds", "typed", "shown"),
    [
        (90 * 86400, "100d", "90d"),
        (90 * 86400, "2400h", "2160h"),
        (90 * 86400, "1h30m", "2160h"),  # the largest unit the user typed
        (90 * 86400, "8640000", "7776000s"),  # plain seconds stay seconds
        (90 * 86400, "100w", "90d"),  # not a whole number of weeks: exact instead
        (86400, "48h", "24h"),
        (86400, "3000m", "1440m"),
        (90, "2m", "1m30s"),
    ],
)
def test_duration_like_answers_in_the_unit_the_user_typed(
    seconds: int, typed: str, shown: str
) -> None:
    """Issue 22: `--ttl 100d` was refused with `8640000s exceeds 7776000s`."""
    assert duration_like(seconds, typed) == shown
    assert parse_duration(shown).total_seconds() == seconds


@pytest.mark.parametrize(
    ("seconds", "shown"), [(93784, "1d2h3m4s"), (7776000, "90d"), (0, "0s"), (1.5, "1.5s")]
)
def test_exact_duration_drops_no_part(seconds: float, shown: str) -> None:
    assert exact_duration(seconds) == shown
    assert parse_duration(shown).total_seconds() == seconds
