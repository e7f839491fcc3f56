"""`bulwark certs`: query the CA's issuance record through its admin API.

    bulwark certs list [--namespace NS] [--service-account SA] [--spiffe-id ID]
                       [--cluster ID] [--kind x509-svid|jwt-svid] [--state active|expired]
                       [--expiring-within 2h]
                       [--issued-since 24h|RFC3339] [--issued-before ...] [-o table|json|yaml]
    bulwark certs show SERIAL [-o table|json|yaml]
    bulwark certs expiring --within 2h        exit 1 when any certificate matches
    bulwark certs verify-log [--record URL]   exit 1 when the hash chain is broken

All talk to `--admin-url` (env BULWARK_ADMIN_URL; HOST:PORT alone means http://) with the bearer token in
`--token-file` (env BULWARK_ADMIN_TOKEN_FILE). `verify-log` asks the admin API
(`GET /v1/record/verify`) unless `--record URL` names the database to read
directly, which works while the CA is down. Exit code 2 means the question
could not be asked (unreachable, refused, bad input).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from ca_server.cli.admin_client import AdminClient, CliError, admin_client_flags
from ca_server.record.entry import JWT_SVID, X509_SVID
from certs.cli.envflags import env_flag
from certs.cli.exits import EXIT_NO, EXIT_OK, fail
from certs.cli.output import emit, table
from certs.values import (
    InvalidValue,
    format_seconds,
    parse_duration,
    parse_time_or_ago,
    time_left,
)

PAGE_SIZE = 1000
KINDS = (X509_SVID, JWT_SVID)
RED, YELLOW, GREEN, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[0m"


def _filters(args: argparse.Namespace, now: datetime | None = None) -> dict[str, str]:
    """The admin API query parameters of the filter flags, each value checked here first."""
    when = now or datetime.now(UTC)
    params = {
        "namespace": args.namespace,
        "service_account": args.service_account,
        "spiffe_id": args.spiffe_id,
        "cluster_id": args.cluster,
        "state": args.state,
        "kind": args.kind,
    }
    if args.expiring_within is not None:
        within = parse_duration(args.expiring_within, "--expiring-within")
        params["expiring_within"] = format_seconds(within)
    for flag in ("issued_since", "issued_before"):
        text = getattr(args, flag, None)
        if text is not None:
            moment = parse_time_or_ago(text, "--" + flag.replace("_", "-"), now=when)
            params[flag] = moment.isoformat().replace("+00:00", "Z")
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


def _colour(seconds: int) -> str:
    if seconds <= 3600:
        return RED
    return YELLOW if seconds <= 6 * 3600 else GREEN


def kind_of(item: dict[str, Any]) -> str:
    """x509-svid or jwt-svid (rows recorded before JWT-SVIDs existed carry no kind: X.509)."""
    return str(item.get("kind") or X509_SVID)


def print_table(items: list[dict[str, Any]], out: TextIO) -> None:
    """SPIFFE ID, serial, time left (coloured on a terminal), authenticator: 100 columns.
    When JWT-SVIDs are among them, a KIND column (x509-svid, jwt-svid) says which row is
    which (a JWT-SVID's serial is its jti); without any, the table keeps its room for IDs."""
    colour = out.isatty() and "NO_COLOR" not in os.environ
    kinds = any(kind_of(i) != X509_SVID for i in items)
    header = ("SPIFFE ID", *(("KIND",) if kinds else ()), "SERIAL", "TIME LEFT", "AUTHENTICATOR")
    rows = [
        (
            i["spiffe_id"],
            *((kind_of(i),) if kinds else ()),
            i["serial"],
            time_left(int(i["seconds_left"])),
            i["authenticator"],
        )
        for i in items
    ]
    left = header.index("TIME LEFT")
    lines = table(header, rows, shrink=(0, len(header) - 1))
    out.write(lines[0] + "\n")
    left_at = lines[0].index("TIME LEFT")  # columns are aligned: every row's cell starts here
    for line, row, item in zip(lines[1:], rows, items, strict=True):
        if colour:
            end = left_at + len(row[left])
            tint = _colour(int(item["seconds_left"]))
            line = f"{line[:left_at]}{tint}{row[left]}{RESET}{line[end:]}"
        out.write(line + "\n")


def _list(args: argparse.Namespace) -> int:
    items = fetch_all(AdminClient.from_args(args), _filters(args), args.limit)

    def human() -> None:
        if items:
            print_table(items, sys.stdout)
        else:
            print("nothing in the record matches", file=sys.stderr)

    emit(items, args.output, human)
    return EXIT_OK


def _expiring(args: argparse.Namespace) -> int:
    parse_duration(args.within, "--within")  # named as the user typed it
    args.expiring_within, args.state = args.within, None
    items = fetch_all(AdminClient.from_args(args), _filters(args), None)

    def human() -> None:
        if items:
            print_table(items, sys.stdout)
        else:
            print(f"no active certificate expires within {args.within}")

    emit(items, args.output, human)
    return EXIT_NO if items else EXIT_OK


def _show(args: argparse.Namespace) -> int:
    serial = urllib.parse.quote(args.serial.strip(), safe="")
    detail = AdminClient.from_args(args).get(f"/v1/certificates/{serial}")

    def human() -> None:
        pem = detail.pop("certificate_pem")
        detail["time_left"] = time_left(int(detail["seconds_left"]))
        width = max(len(k) for k in detail)
        for key, value in detail.items():
            print(f"{key.ljust(width)}  {value if value != '' else '-'}")
        print()
        print(pem, end="" if pem.endswith("\n") else "\n")

    emit(detail, args.output, human)
    return EXIT_OK


def _verify_log(args: argparse.Namespace) -> int:
    report = (
        _verify_direct(args.record)
        if args.record
        else AdminClient.from_args(args).get("/v1/record/verify")
    )
    emit(report, args.output, lambda: _print_verify(report))
    return EXIT_OK if report["ok"] else EXIT_NO


def _print_verify(report: dict[str, Any]) -> None:
    if report["ok"]:
        print(
            f"record intact: {report['rows_checked']} row(s) verified"
            f" (seq {report['anchor_seq'] + 1}..{report['head_seq']})"
        )
    else:
        broken = report["broken"]
        serial = f"serial {broken['serial']}" if broken["serial"] else "no serial"
        print(f"record BROKEN at seq {broken['seq']} ({serial}): {broken['reason']}")
    for segment in report.get("segments") or []:
        damage = segment["damage"]
        found = f"; before it: seq {damage['seq']} {damage['reason']}" if damage else ""
        print(
            f"segment break before seq {segment['first_seq']} ({segment['started_at']}):"
            f" {segment['reason']}{found}"
        )


def _verify_direct(url: str) -> dict[str, Any]:
    from ca_server.record.ledger import LedgerError, LedgerReader, parse_record_url

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
        except (CliError, InvalidValue) as exc:
            return fail("certs", str(exc))
        return code

    return run


def _parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The flags every `certs` command shares, and the identity filters."""
    common = admin_client_flags(
        token_help="file holding the admin bearer token (needed unless the admin port is loopback)"
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--namespace", "-n", help="only this Kubernetes namespace")
    filters.add_argument("--service-account", "-s", help="only this service account")
    filters.add_argument("--spiffe-id", help="only this exact SPIFFE ID")
    filters.add_argument(
        "--cluster",
        metavar="ID",
        help="only those issued for this cluster ID (the request's clusterid; with TokenReview "
        "a request naming none is the CA's own cluster's)",
    )
    filters.add_argument(
        "--kind",
        choices=KINDS,
        help="only X.509 certificates (x509-svid) or only JWT-SVIDs (jwt-svid); default: both",
    )
    return common, filters


def _add_list(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    listing = sub.add_parser("list", parents=parents, help="list recorded certificates")
    listing.add_argument("--state", choices=["active", "expired"], help="only active or expired")
    listing.add_argument(
        "--expiring-within",
        metavar="DURATION",
        help="only active ones expiring within this duration (2h, 30m, 1h30m, 7d)",
    )
    listing.add_argument(
        "--issued-since",
        metavar="WHEN",
        help="only those issued at or after WHEN: a duration ago (24h, 7d) or RFC 3339",
    )
    listing.add_argument(
        "--issued-before",
        metavar="WHEN",
        help="only those issued before WHEN: a duration ago (1h) or RFC 3339",
    )
    listing.add_argument("--limit", type=int, help="at most this many (default: all)")
    listing.set_defaults(handler=_guarded(_list))


def register(subparsers: Any) -> None:
    """Add `certs list|show|expiring|verify-log` to the `bulwark` command line."""
    common, filters = _parents()
    certs = subparsers.add_parser(
        "certs",
        help="query the CA's record of issued certificates",
        description=(
            "Query the CA's record of issued certificates through its admin API. "
            "Exit 2 when the question cannot be asked (CA unreachable, refused, bad value)."
        ),
    )
    sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    _add_list(sub, [common, filters])

    show = sub.add_parser("show", parents=[common], help="one certificate in full, with its PEM")
    show.add_argument("serial", metavar="SERIAL", help="hex serial (case and colons ignored)")
    show.set_defaults(handler=_guarded(_show))

    expiring = sub.add_parser(
        "expiring",
        parents=[common, filters],
        help="active certificates expiring soon; exit 1 when any",
    )
    expiring.add_argument(
        "--within", required=True, metavar="DURATION", help="a duration: 2h, 30m, 1h30m, 7d"
    )
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
