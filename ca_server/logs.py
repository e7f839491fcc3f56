"""Log output of the CA: text or JSON lines, and the issuance/refusal event lines.

`configure(level, log_format)` sets up the root logger of a process (the
supervisor and each worker). `JsonFormatter` writes one JSON object per line; it
is stdlib only (about 20 lines, so no python-json-logger dependency) and any
component may reuse it. `CaEventLog` writes one INFO line per issued
certificate and one per refusal; refusals are rate-limited per reason so a
flood cannot fill the disk, and every value a client chose is escaped (no
control characters, so one event is one line). Tokens are never passed to it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ca_server.descriptors import Exhaustion
from ca_server.identity import Caller
from ca_server.options import LOG_FORMATS
from ca_server.record.entry import IssuedCertificate

TEXT_FORMAT = "%(asctime)s {process}%(levelname)s %(name)s: %(message)s"
EVENT_LOGGER = "ca_server.events"
MAX_VALUE_CHARS = 256


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")  # C0, DEL, C1, LS, PS, backslash


def escape(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """`value` as one printable line: control characters as `\\xNN`/`\\uNNNN`, backslashes
    doubled, cut at `limit` characters."""
    text = str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if _UNSAFE.search(text) is not None:
        text = _UNSAFE.sub(_escaped, text)
    return text + "..." if cut else text


def _escaped(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (the `event` of an event
    line), then the record's `fields` as keys of their own."""

    def __init__(self, *, process: str = "") -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": getattr(record, "event", None) or record.getMessage(),
        }
        if self._process:
            out["process"] = self._process
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(log_format: str, *, process: str = "") -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(process=process)
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT.format(process=f"{process} " if process else ""))
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")


def configure(level: int, log_format: str = "text", *, process: str = "") -> None:
    """Send every log record of this process to stderr in `log_format` at `level`.

    Neither format shows a record's source line, thread or process id, so they are not
    collected (the logging HOWTO's "Optimization"): a worker logs a line per certificate,
    and finding the caller's frame was the dearest part of it (issue #18).
    """
    logging._srcfile = None  # no findCaller frame walk
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, process=process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The Kubernetes client's transport logs one INFO line per HTTP request (a TokenReview
    # per certificate, every watch); those are for debugging the CA, not for its operators.
    logging.getLogger("httpx2").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    )


class TokenBucket:
    """`burst` events at once, then `rate` per second."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _line(event: str, fields: Mapping[str, object]) -> str:
    """`event key=value ...`; values quoted when they hold spaces or quotes."""
    parts = [event]
    for key, value in fields.items():
        text = str(value)
        quoted = not text or " " in text or '"' in text
        # values are already escaped (backslashes doubled), so `\"` is unambiguous
        shown = '"' + text.replace('"', '\\"') + '"' if quoted else text
        parts.append(f"{key}={shown}")
    return " ".join(parts)


class CaEventLog:
    """INFO lines for issued certificates and refusals (one event loop per instance)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        refusals_per_s: float = 1.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger or logging.getLogger(EVENT_LOGGER)
        self._bucket: Callable[[], TokenBucket] = lambda: TokenBucket(
            rate=refusals_per_s, burst=burst, clock=clock
        )
        self._buckets: dict[str, TokenBucket] = {}
        self._suppressed: dict[str, int] = {}
        # running out of file descriptors: said with the numbers, at most every few seconds
        self.exhaustion = Exhaustion()

    def issued(self, entry: IssuedCertificate, *, peer: str) -> None:
        self._emit(
            "certificate issued",
            {
                "spiffe_id": escape(entry.spiffe_id),
                "serial": entry.serial,
                "not_after": entry.not_after.isoformat(),
                "authenticator": entry.authenticator,
                "peer": escape(peer),
            },
        )

    def refused(
        self, *, code: str, reason: str, message: str, caller: Caller | None, peer: str
    ) -> None:
        """Log a refusal unless `reason` is over its rate; dropped lines are counted and
        reported in one summary line before the next line of that reason (or at `flush`)."""
        bucket = self._buckets.get(reason)
        if bucket is None:
            bucket = self._buckets[reason] = self._bucket()
        if not bucket.take():
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._summary(reason)
        fields: dict[str, object] = {"code": code, "reason": reason}
        if caller is not None:
            fields["caller"] = escape(caller.spiffe_id)
            fields["authenticator"] = caller.authenticator
        fields["peer"] = escape(peer)
        fields["detail"] = escape(message)
        self._emit("request refused", fields)

    def flush(self) -> None:
        """Report every pending count of suppressed lines (at shutdown)."""
        for reason in list(self._suppressed):
            self._summary(reason)

    def _summary(self, reason: str) -> None:
        dropped = self._suppressed.pop(reason, 0)
        if dropped:
            self._emit(
                f"{dropped} refusal lines suppressed",
                {"reason": reason, "suppressed": dropped},
                level=logging.WARNING,
            )

    def _emit(self, event: str, fields: Mapping[str, object], level: int = logging.INFO) -> None:
        self._log.log(
            level, "%s", _line(event, fields), extra={"event": event, "fields": dict(fields)}
        )
