"""The grammar of every value a user types: durations, host:port, booleans, times.

One parser per kind, shared by `bulwark ca serve`, the agent, the `bulwark`
CLI and the admin API's query parameters, so `1h30m` means the same thing
everywhere and every refusal reads the same way:

    <setting> must be <what it accepts>, got '<text>'

- Durations follow Go's `time.ParseDuration` (`1h30m`, `500ms`, `1.5h`,
  `300us`), as Istio's environment variables do, plus `d` (24h) and `w` (7d);
  a bare number is seconds. Negative durations are refused: no setting uses one.
- host:port is Go's `net.SplitHostPort` with the port range checked: IPv6 in
  brackets, a host always given.
- Booleans are Go's `strconv.ParseBool` set; anything else is an error, never false.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from certs.errors import CertsError

__all__ = [
    "BOOL_WORDS",
    "InvalidValue",
    "duration_like",
    "exact_duration",
    "format_duration",
    "format_seconds",
    "parse_bool",
    "parse_duration",
    "parse_host_port",
    "parse_time_or_ago",
    "time_left",
]

DURATION_EXAMPLES = "a duration such as 1h30m, 500ms, 1.5h, 7d, 2w or 90 (seconds)"
BOOL_WORDS = "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False"

_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek small mu, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_PART = re.compile(r"(\d*)(?:\.(\d*))?([a-zµμ]+)")
_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_PORT_MAX = 65535
MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration is int64 nanoseconds


class InvalidValue(CertsError, ValueError):
    """A typed value does not follow its grammar; the message names the setting."""

    def __init__(self, what: str, expected: str, text: str) -> None:
        shown = text if len(text) <= 64 else text[:64] + "..."
        super().__init__(f"{what} must be {expected}, got {shown!r}")
        self.what = what
        self.text = text


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """A Go duration (`1h30m`, `500ms`, `1.5h`), with `d` and `w`, or plain seconds (`90`)."""
    value = text.strip()
    if len(value) > 64:
        raise InvalidValue(what, "a duration of at most 64 characters (too long)", text)
    if _SECONDS.fullmatch(value):
        nanos = float(value) * 1e9
    else:
        if value.startswith("-") and value != "-0":
            raise InvalidValue(what, "a duration that is not negative", text)
        if value[:1] in "+-":
            value = value[1:]
        parsed = _go_duration_nanos(value)
        if parsed is None:
            raise InvalidValue(what, DURATION_EXAMPLES, text)
        nanos = parsed
    # Checked before timedelta() is built, which overflows near 10^14 s.
    if nanos > MAX_DURATION_NS:
        raise InvalidValue(what, "a duration of at most 2562047h (Go's limit)", text)
    return timedelta(microseconds=nanos / 1000)


def _go_duration_nanos(value: str) -> float | None:
    """Nanoseconds of an unsigned Go duration, or None when it does not parse."""
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        whole, frac, unit = match.groups()
        if match.start() != pos or unit not in _UNIT_NS or not (whole or frac):
            return None
        number = float(f"{whole or '0'}.{frac or '0'}")
        total += number * _UNIT_NS[unit]
        pos = match.end()
    return total if value and pos == len(value) else None


def parse_host_port(
    text: str, what: str = "address", *, allow_port_zero: bool = True
) -> tuple[str, int]:
    """`host:port` or `[v6]:port` to `(host, port)`; port 0 ("any free port") where allowed."""
    value = text.strip()
    if value.startswith("["):
        close = value.find("]")
        host, rest = value[1:close], (value[close + 1 :] if close > 0 else "")
        ok = close > 1 and rest.startswith(":") and ":" in host
        port = rest[1:]
    else:
        host, sep, port = value.rpartition(":")
        ok = bool(sep) and not any(c in host for c in ":[]")
    lowest = 0 if allow_port_zero else 1
    if not (ok and host and port.isascii() and port.isdigit() and lowest <= int(port) <= _PORT_MAX):
        expected = f"HOST:PORT with a port {lowest}-{_PORT_MAX} (IPv6 in brackets: [::1]:15012)"
        raise InvalidValue(what, expected, text)
    return host, int(port)


def parse_bool(text: str, what: str = "value") -> bool:
    """Go's `strconv.ParseBool`: garbage is an error, never false."""
    value = text.strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidValue(what, f"a boolean ({BOOL_WORDS})", text)


def parse_time_or_ago(text: str, what: str, *, now: datetime) -> datetime:
    """An RFC 3339 time, or a duration meaning that long before `now`."""
    value = text.strip()
    try:
        return now - parse_duration(value, what)
    except InvalidValue:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or "T" not in value.upper():
        raise InvalidValue(
            what, "an RFC 3339 time (2026-01-02T15:04:05Z) or a duration ago (2h, 7d)", text
        )
    return when.astimezone(UTC)


def format_seconds(delta: timedelta) -> str:
    """Seconds as the admin API and older servers read them: `90`, or `0.5` when fractional."""
    seconds = delta.total_seconds()
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def format_duration(seconds: float) -> str:
    """Compact and parseable by `parse_duration`: `2d3h`, `23h59m`, `5m30s`, `42s`, `-1h2m`."""
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d{hours}h" if hours else f"{days}d"
    elif hours:
        text = f"{hours}h{minutes}m" if minutes else f"{hours}h"
    elif minutes:
        text = f"{minutes}m{secs}s" if secs else f"{minutes}m"
    else:
        text = f"{secs}s"
    return sign + text


def time_left(seconds: float) -> str:
    """The one time-left format of every command: `23h59m`, or `-1h2m` once expired."""
    return format_duration(seconds)


_EXACT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def exact_duration(seconds: float) -> str:
    """Exact and parseable by `parse_duration`, no part dropped: `90d`, `1d2h3m4s`, `1.5s`."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, size in _EXACT_UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def duration_like(seconds: float, typed: str) -> str:
    """`seconds` in the largest unit of what a user typed (`typed` = `100d`: `90d`;
    `2400h`: `2160h`), so a limit reads in the user's terms; exact otherwise."""
    value = typed.strip().lstrip("+")
    if _SECONDS.fullmatch(value):
        return f"{seconds:g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    units = [m.group(3) for m in _PART.finditer(value) if m.group(3) in _UNIT_NS]
    if units:
        unit = max(units, key=_UNIT_NS.__getitem__)
        size = _UNIT_NS[unit] / 1e9
        count = seconds / size
        if count == int(count):
            return f"{int(count)}{unit}"
    return exact_duration(seconds)
