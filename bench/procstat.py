"""Process accounting from /proc: CPU seconds and resident memory of a process tree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                out.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue
    return out


@dataclass(frozen=True, slots=True)
class TreeSample:
    cpu_s: dict[int, float]  # pid -> user+sys seconds
    rss_bytes: int
    switches: int = 0  # voluntary + involuntary context switches of every thread

    def switches_since(self, earlier: TreeSample) -> int:
        return self.switches - earlier.switches

    def cpu_since(self, earlier: TreeSample) -> float:
        """CPU spent between two samples; a process born in between counts from zero."""
        return sum(v - earlier.cpu_s.get(pid, 0.0) for pid, v in self.cpu_s.items())


def thread_switches(pid: int) -> int:
    """Context switches of every thread of `pid` so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split(":", 1)[1])
    return total


def sample(root_pid: int, *, switches: bool = False) -> TreeSample:
    """user+sys CPU and summed RSS of `root_pid` and its descendants (and their context
    switches when asked: that reads every thread's status)."""
    cpu: dict[int, float] = {}
    rss = 0
    n_switches = 0
    pids = descendants(root_pid)
    if switches:
        n_switches = sum(thread_switches(pid) for pid in pids)
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # after ')': state(0) ppid(1) ... utime(11) stime(12) ... rss(21)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss += int(fields[21]) * PAGE
    return TreeSample(cpu_s=cpu, rss_bytes=rss, switches=n_switches)


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def anonymous_bytes(pid: int) -> int:
    """Anonymous (heap, stacks: never shared with another process) resident memory of `pid`."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` alone (not its children)."""
    fields = _stat_fields(pid)
    return int(fields[21]) * PAGE if fields is not None else 0
