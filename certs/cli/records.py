"""`bulwark certs`: query the CA's issuance record through its admin API.

    bulwark certs list [--namespace NS] [--service-account SA] [--spiffe-id ID]
                       [--state active|expired] [--expiring-within 2h] [--json]
    bulwark certs show SERIAL [--json]
    bulwark certs expiring --within 2h        exit 1 when any certificate matches
    bulwark certs verify-log [--record URL]   exit 1 when the hash chain is broken

All talk to `--admin-url` (env BULWARK_ADMIN_URL) with the bearer token in
`--token-file` (env BULWARK_ADMIN_TOKEN_FILE). `verify-log` asks the admin API
(`GET /v1/record/verify`) unless `--record URL` names the database to read
directly, which works while the CA is down. Exit code 2 means the question
could not be asked (unreachable, refused, bad input).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from certs.cli.envflags import env_flag

DEFAULT_ADMIN_URL = "http://127.0.0.1:15014"
PAGE_SIZE = 1000
TIMEOUT_S = 30.0
EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2
RED, YELLOW, GREEN, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[0m"


class CliError(Exception):
    """A failure to report on stderr with exit code 2."""


class AdminClient:
    """GETs JSON from the admin API with stdlib urllib (no third-party HTTP at runtime)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self._base = base_url.rstrip("/")
        self._token = token

    def get(self, path: str, params: dict[str, str | None] | None = None) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self._base}{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self._token is not None:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CliError(_http_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the admin API at {self._base}: {reason}") from None
        except json.JSONDecodeError:
            raise CliError(f"the admin API at {self._base} did not answer JSON") from None


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (json.JSONDecodeError, AttributeError, OSError):
        detail = None
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail
        )
    if exc.code == 401:
        return "the admin API refused the request (401): pass a valid --token-file"
    return f"admin API error {exc.code}: {detail or exc.reason}"


def _client(args: argparse.Namespace) -> AdminClient:
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    return AdminClient(args.admin_url, token)


def _filters(args: argparse.Namespace) -> dict[str, str]:
    params = {
        "namespace": args.namespace,
        "service_account": args.service_account,
        "spiffe_id": args.spiffe_id,
        "state": args.state,
        "expiring_within": args.expiring_within,
    }
    return {k: v for k, v in params.items() if v is not None}


def fetch_all(
    client: AdminClient, params: dict[str, str], limit: int | None
) -> list[dict[str, Any]]:
    """Follow next_cursor until the end (or `limit` items)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while limit is None or len(items) < limit:
        page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(items))
        page = client.get("/v1/certificates", {**params, "limit": str(page_size), "cursor": cursor})
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return items


def human_duration(seconds: int) -> str:
    """Compact time left: 2d3h, 5h07m, 42m, 30s."""
    s = abs(seconds)
    if s >= 86400:
        text = f"{s // 86400}d{s % 86400 // 3600}h"
    elif s >= 3600:
        text = f"{s // 3600}h{s % 3600 // 60:02d}m"
    elif s >= 60:
        text = f"{s // 60}m"
    else:
        text = f"{s}s"
    return text if seconds > 0 else f"expired {text} ago"


def _colour(seconds: int) -> str:
    if seconds <= 3600:
        return RED
    return YELLOW if seconds <= 6 * 3600 else GREEN


def print_table(items: list[dict[str, Any]], out: TextIO) -> None:
    """SPIFFE ID, serial, not-after, time left (coloured on a terminal), authenticator."""
    colour = out.isatty() and "NO_COLOR" not in os.environ
    header = ("SPIFFE ID", "SERIAL", "NOT AFTER", "TIME LEFT", "AUTHENTICATOR")
    rows = [
        (
            i["spiffe_id"],
            i["serial"],
            i["not_after"],
            human_duration(int(i["seconds_left"])),
            i["authenticator"],
        )
        for i in items
    ]
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    for row, item in zip(rows, items, strict=True):
        cells = [str(v).ljust(w) for v, w in zip(row, widths, strict=True)]
        if colour:
            cells[3] = f"{_colour(int(item['seconds_left']))}{cells[3]}{RESET}"
        out.write("  ".join(cells).rstrip() + "\n")


def _list(args: argparse.Namespace) -> int:
    items = fetch_all(_client(args), _filters(args), args.limit)
    if args.json:
        json.dump(items, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif items:
        print_table(items, sys.stdout)
    else:
        print("no certificates match", file=sys.stderr)
    return EXIT_OK


def _expiring(args: argparse.Namespace) -> int:
    args.expiring_within, args.state = args.within, None
    items = fetch_all(_client(args), _filters(args), None)
    if args.json:
        json.dump(items, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif items:
        print_table(items, sys.stdout)
    else:
        print(f"no active certificate expires within {args.within}")
    return EXIT_FOUND if items else EXIT_OK


def _show(args: argparse.Namespace) -> int:
    serial = urllib.parse.quote(args.serial.strip(), safe="")
    detail = _client(args).get(f"/v1/certificates/{serial}")
    if args.json:
        json.dump(detail, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    pem = detail.pop("certificate_pem")
    left = int(detail["seconds_left"])
    detail["time_left"] = human_duration(left)
    width = max(len(k) for k in detail)
    for key, value in detail.items():
        print(f"{key.ljust(width)}  {value if value != '' else '-'}")
    print()
    print(pem, end="" if pem.endswith("\n") else "\n")
    return EXIT_OK


def _verify_log(args: argparse.Namespace) -> int:
    report = _verify_direct(args.record) if args.record else _client(args).get("/v1/record/verify")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif report["ok"]:
        print(
            f"record intact: {report['rows_checked']} row(s) verified"
            f" (seq {report['anchor_seq'] + 1}..{report['head_seq']})"
        )
    else:
        broken = report["broken"]
        serial = f"serial {broken['serial']}" if broken["serial"] else "no serial"
        print(f"record BROKEN at seq {broken['seq']} ({serial}): {broken['reason']}")
    if not args.json:
        for segment in report.get("segments") or []:
            damage = segment["damage"]
            found = f"; before it: seq {damage['seq']} {damage['reason']}" if damage else ""
            print(
                f"segment break before seq {segment['first_seq']} ({segment['started_at']}):"
                f" {segment['reason']}{found}"
            )
    return EXIT_OK if report["ok"] else EXIT_FOUND


def _verify_direct(url: str) -> dict[str, Any]:
    from ca_server.ledger import LedgerError, LedgerReader, parse_record_url

    try:
        reader = LedgerReader(parse_record_url(url))  # no schema creation: read only
        try:
            report = reader.verify()
        finally:
            reader.close()
    except LedgerError as exc:
        raise CliError(f"cannot verify the record: {exc}") from None
    return dataclasses.asdict(report)


Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(args)
        except CliError as exc:
            print(f"bulwark certs: {exc}", file=sys.stderr)
            return EXIT_ERROR
        return code

    return run


def register(subparsers: Any) -> None:
    """Add `certs list|show|expiring|verify-log` to the `bulwark` command line."""
    common = argparse.ArgumentParser(add_help=False)
    env_flag(
        common,
        "--admin-url",
        "BULWARK_ADMIN_URL",
        default=DEFAULT_ADMIN_URL,
        help="the CA's admin API",
    )
    env_flag(
        common,
        "--token-file",
        "BULWARK_ADMIN_TOKEN_FILE",
        help="file holding the admin bearer token (needed unless the admin port is loopback)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--namespace", "-n", help="only this Kubernetes namespace")
    filters.add_argument("--service-account", "-s", help="only this service account")
    filters.add_argument("--spiffe-id", help="only this exact SPIFFE ID")

    certs = subparsers.add_parser("certs", help="query the CA's record of issued certificates")
    sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common, filters], help="list recorded certificates")
    listing.add_argument("--state", choices=["active", "expired"], help="only active or expired")
    listing.add_argument(
        "--expiring-within",
        metavar="DURATION",
        help="only active ones expiring within e.g. 2h, 30m, 90s",
    )
    listing.add_argument("--limit", type=int, help="at most this many (default: all)")
    listing.set_defaults(handler=_guarded(_list))

    show = sub.add_parser("show", parents=[common], help="one certificate in full, with its PEM")
    show.add_argument("serial", metavar="SERIAL", help="hex serial (case and colons ignored)")
    show.set_defaults(handler=_guarded(_show))

    expiring = sub.add_parser(
        "expiring",
        parents=[common, filters],
        help="active certificates expiring soon; exit 1 when any",
    )
    expiring.add_argument("--within", required=True, metavar="DURATION", help="e.g. 2h, 30m, 90s")
    expiring.set_defaults(handler=_guarded(_expiring))

    verify = sub.add_parser(
        "verify-log", parents=[common], help="recompute the record's hash chain; exit 1 when broken"
    )
    env_flag(
        verify,
        "--record",
        "BULWARK_RECORD",
        help="read this record URL directly instead of asking the admin API",
    )
    verify.set_defaults(handler=_guarded(_verify_log))
