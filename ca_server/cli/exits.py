"""How the CA's commands end: the exit status and the one line a failure prints.

0: done. 1: the command answered "no" (a certificate expires soon, the record's chain is
broken, the CA refused a rotation step that does not apply now). 2: it could not be done: a
bad value, a file that cannot be used, a start-up refusal, a CA that cannot be asked.
Library code (the supervisor, the authority, the record) raises; only the commands decide
how to exit, here.
"""

from __future__ import annotations

import errno
import sys

EXIT_OK, EXIT_NO, EXIT_ERROR = 0, 1, 2


def startup_errors() -> tuple[type[Exception], ...]:
    """What stops `ca serve` with exit 2 and one line instead of a traceback. Each type's
    message names the file or flag and the fix; a new typed start-up error is one more entry.
    OSError covers a file the CA could not use that no check caught first."""
    from ca_server.errors import ConfigError
    from ca_server.record.ledger.integrity import RecordDamaged
    from certs.errors import InvalidSpiffeId

    return (ConfigError, RecordDamaged, InvalidSpiffeId, ValueError, OSError)


def failure_line(exc: BaseException, fix: str | None = None) -> str:
    """One line for a failure: our errors carry their own words; a file-system error says
    which path, what went wrong and, given `fix`, what to check."""
    if isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            reason = "a file is in the way where a directory is needed"
        return f"cannot use {exc.filename}: {reason}" + (f" ({fix})" if fix else "")
    return " ".join(str(exc).split()) or type(exc).__name__


def report(command: str, problem: BaseException | str, fix: str | None = None) -> None:
    """Print `bulwark COMMAND: <one line>` on stderr."""
    line = problem if isinstance(problem, str) else failure_line(problem, fix)
    print(f"bulwark {command}: {line}", file=sys.stderr)


def fail(command: str, problem: BaseException | str, fix: str | None = None) -> int:
    """`report` the problem; the exit status of a command that could not be done."""
    report(command, problem, fix)
    return EXIT_ERROR


__all__ = [
    "EXIT_ERROR",
    "EXIT_NO",
    "EXIT_OK",
    "fail",
    "failure_line",
    "report",
    "startup_errors",
]
