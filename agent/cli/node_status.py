"""`bulwark agent status --node`: the identities a node agent serves, read from its status port.

A node agent attests whoever connects to its socket, so the CLI asks its loopback status
port instead (`/debug/identities`): every identity with the pods (or processes) behind it,
its serial and time left (the serial with `-o json`). Keys are never on that page.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from agent.node.status import IDENTITIES_PATH

TIMEOUT_S = 5.0
_HEADER = ("IDENTITY", "TIME LEFT", "HOLDERS")


class NodeStatusError(Exception):
    """The status port could not be read; the message says why."""


def fetch_node_status(status_addr: str) -> dict[str, Any]:
    """The `/debug/identities` document of the node agent at `status_addr` (host:port)."""
    url = f"http://{status_addr}{IDENTITIES_PATH}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            document: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = " (a per-pod agent: use --socket)" if exc.code == 404 else ""
        raise NodeStatusError(f"{url} answered {exc.code}{hint}") from None
    except (OSError, ValueError) as exc:
        raise NodeStatusError(f"cannot read {url}: {exc}") from None
    if document.get("mode") != "node":
        raise NodeStatusError(f"{url} is not a node agent's status page")
    return document


def format_node_status(document: dict[str, Any]) -> str:
    """The table of `bulwark agent status --node`, within 100 columns."""
    from certs.cli.output import table
    from certs.values import time_left

    rows = []
    for item in document["identities"]:
        holders = item["holders"]
        shown = ", ".join(holders[:3]) + (f" +{len(holders) - 3}" if len(holders) > 3 else "")
        if item["seconds_left"] is None:
            left = item["error"] or "pending"
        else:
            left = time_left(item["seconds_left"])
        rows.append((item["spiffe_id"], left, shown or "-"))
    lines = table(_HEADER, rows, shrink=(2, 1, 0))
    lines.append("")
    lines.append(
        f"{len(document['identities'])} identities, {document['connections']} connection(s), "
        f"{document['attestor']} attestor, socket {document['socket']}"
    )
    lines.append(f"certificates asked for with {document['ca_call']}")
    return "\n".join(lines)


def all_served(document: dict[str, Any]) -> bool:
    return all(
        item["seconds_left"] is not None and item["seconds_left"] > 0
        for item in document["identities"]
    )
