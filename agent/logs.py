"""The agent's log lines: one event per line whatever a client sends, as text or JSON.

Anything a local process sends (an SDS NACK message, a node id, a resource
name, a path) may reach a log line. `printable` escapes control characters in
such values, and both formatters escape the whole rendered message again, so
a newline from a client can never forge a second log line.

JSON lines are rendered with the standard library's `json`: a JSON formatter
package would add an import to every pod for a dozen lines of code.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("text", "json")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_SHOWN = 256


def printable(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` with control characters escaped (`\\n`, `\\x1b`...) and cut to `limit` characters."""
    escaped = _CONTROL.sub(_escape_char, text)
    if len(escaped) > limit:
        return escaped[:limit] + f"...({len(text)} chars)"
    return escaped


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


class LogBudget:
    """At most `limit` lines per `window_s` for one kind of client-triggered event.

    A local client can trigger refusals as fast as it can send; the log must not grow
    as fast. When lines were dropped, the next allowed one says how many.
    """

    def __init__(
        self,
        limit: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._start = clock()
        self._used = 0
        self._dropped = 0

    def take(self) -> int | None:
        """None when this line must be dropped; else how many were dropped before it."""
        now = self._clock()
        if now - self._start >= self._window:
            self._start, self._used = now, 0
        if self._used >= self._limit:
            self._dropped += 1
            return None
        self._used += 1
        dropped, self._dropped = self._dropped, 0
        return dropped


def parse_level(text: str) -> int:
    """A `--log-level` value, or ValueError naming the accepted ones."""
    try:
        return LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a log level; use one of {', '.join(LEVELS)}") from None


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, control characters escaped (tracebacks stay multi-line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escape_char, record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event)


def configure(level: int, log_format: str) -> None:
    """Send the agent's logs to stderr at `level` in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
