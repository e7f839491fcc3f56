"""Helpers of the CA suite (`shared_ca` itself lives in tests/conftest.py)."""

from __future__ import annotations

import re
import urllib.request

from tests.support.ca_process import RunningCa


def metric(ca: RunningCa, name: str, labels: str = "") -> float:
    """One sample of the CA's /metrics, 0 when absent."""
    text = urllib.request.urlopen(f"{ca.admin_url}/metrics", timeout=5).read().decode()
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
