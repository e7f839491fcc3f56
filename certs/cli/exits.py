"""How `bulwark` commands end (the CA's, the agent's, the CLI's): the exit status and the one
line a failure prints.

0: done. 1: the command answered "no" (a certificate expires soon, the record's chain is
broken, the CA refused a rotation step that does not apply now). 2: it could not be done: a
bad value, a file that cannot be used, a start-up refusal, a CA that cannot be asked.
Library code (the supervisor, the agent's runtime, the record) raises; only the commands
decide how to exit, with these.
"""

from __future__ import annotations

import errno
import sys

EXIT_OK, EXIT_NO, EXIT_ERROR = 0, 1, 2


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
]
