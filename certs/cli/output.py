"""`-o table|json|yaml` for every command that prints records or certificates.

Tables fit 100 columns: named columns lose their middle (`…`) when they would not.
YAML comes from PyYAML (declared; lightkube needs it too), imported only when asked for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

FORMATS = ("table", "json", "yaml")
MAX_WIDTH = 100
GAP = "  "
MIN_COLUMN = 12


def add_output_flag(parser: Any, *, default: str = "table") -> None:
    """`-o/--output table|json|yaml`, with `--json` kept as a shorthand for `-o json`."""
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default,
        help="output format",
    )
    parser.add_argument(
        "--json", action="store_const", dest="output", const="json", help="same as -o json"
    )


def emit(data: Any, fmt: str, human: Callable[[], None], out: TextIO | None = None) -> None:
    """Print `data` as JSON or YAML, or call `human` for the table form."""
    stream = out or sys.stdout
    if fmt == "json":
        json.dump(data, stream, indent=2)
        stream.write("\n")
    elif fmt == "yaml":
        stream.write(to_yaml(data))
    else:
        human()


def to_yaml(data: Any) -> str:
    import yaml

    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    shrink: Sequence[int] = (),
    width: int = MAX_WIDTH,
) -> list[str]:
    """Left-aligned columns; the `shrink` columns (in that order) lose their middle to fit `width`."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    for column in shrink:
        if excess <= 0:
            break
        cut = min(excess, max(0, widths[column] - MIN_COLUMN))
        widths[column] -= cut
        excess -= cut
    return [
        GAP.join(_fit(c, w).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]


def _fit(text: str, width: int) -> str:
    """`text`, or its start and end around `…` (the end of a SPIFFE ID says most)."""
    if len(text) <= width:
        return text
    tail = (width - 1) * 2 // 3
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]
