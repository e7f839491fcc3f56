"""Helpers of the CA suite (`shared_ca` itself lives in tests/conftest.py)."""

from __future__ import annotations

import re
import urllib.request

from tests.support.ca_process import RunningCa

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.e+-]+|NaN|[+-]Inf)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str, labels: str = "") -> list[float]:
    """The values of every sample of `name` in a Prometheus text exposition whose labels
    include all of `labels` (`a="x",b="y"`; other labels, such as `cluster`, may be there)."""
    wanted = dict(_LABEL.findall(labels))
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        have = dict(_LABEL.findall(match.group(2) or ""))
        if all(have.get(k) == v for k, v in wanted.items()):
            found.append(float(match.group(3)))
    return found


def metric(ca: RunningCa, name: str, labels: str = "") -> float:
    """The CA's /metrics samples of `name` with (at least) `labels`, summed; 0 when absent."""
    text = urllib.request.urlopen(f"{ca.admin_url}/metrics", timeout=5).read().decode()
    return sum(samples(text, name, labels))
