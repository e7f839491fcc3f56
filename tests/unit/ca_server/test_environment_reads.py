"""The CA reads its environment in one layer: the command line and its settings tables.

`ca_server/config.py` says flags and environment variables are read in one place and the
configuration is passed down. No module below that layer touches `os.environ`, except the
supervisor handing its workers prometheus_client's multiprocess directory (plumbing
between processes, written, never read as a setting).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SETTINGS_LAYER = (
    "ca_server/cli/",
    "ca_server/options.py",
    "ca_server/kube/settings.py",
    "ca_server/hsm/settings.py",  # the HSM flags, and the PIN a spawned worker reads again
)
PLUMBING = {("ca_server/process/supervisor.py", 'os.environ["PROMETHEUS_MULTIPROC_DIR"] = ')}


def environment_uses(source: str) -> list[tuple[int, str]]:
    """(line, source line) of every `os.environ`, `os.getenv` or bare `environ`/`getenv`
    imported from os."""
    tree = ast.parse(source)
    lines = source.splitlines()
    names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "os"
        for alias in node.names
        if alias.name in ("environ", "getenv", "environb")
    }
    found = []
    for node in ast.walk(tree):
        hit = (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv", "environb")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ) or (isinstance(node, ast.Name) and node.id in names)
        if hit and isinstance(node, ast.expr):
            found.append((node.lineno, lines[node.lineno - 1].strip()))
    return sorted(found)


def test_only_the_settings_layer_reads_the_environment() -> None:
    stray = []
    for path in sorted((REPO / "ca_server").rglob("*.py")):
        where = path.relative_to(REPO).as_posix()
        if where.startswith(SETTINGS_LAYER):
            continue
        for line, text in environment_uses(path.read_text()):
            if not any(where == f and text.startswith(s) for f, s in PLUMBING):
                stray.append(f"{where}:{line}: {text}")
    assert stray == [], "read it in the settings layer and pass it down:\n" + "\n".join(stray)


def test_the_scan_finds_each_spelling() -> None:
    source = (
        "import os\nfrom os import environ as env, getenv\n"
        "a = os.environ.get('X')\nb = env['Y']\nc = getenv('Z')\nd = os.getenv('W')\n"
    )
    assert [line for line, _ in environment_uses(source)] == [3, 4, 5, 6]
