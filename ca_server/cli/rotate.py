"""`bulwark ca rotate`: move the CA slots through the admin API (docs/ROTATION.md).

    bulwark ca rotate status                 slots, bundle, what is due next
    bulwark ca rotate prepare                a new root (new key) enters the trust bundle
    bulwark ca rotate activate [--force]     the prepared CA signs; the active one retires
    bulwark ca rotate retire [--force]       the retired CA leaves the trust bundle

Exit 0 done, 1 refused by the CA because the verb does not apply now (the reason is
printed), 2 the question could not be asked (unreachable, no token, bad value).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ca_server.cli.records import CliError, admin_base_url, admin_client_flags
from certs.cli.output import emit
from certs.values import InvalidValue

TIMEOUT_S = 30.0
EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


class Refused(Exception):
    """The CA answered 409: the verb does not apply to the current slots."""


def call(base: str, token: str | None, method: str, path: str) -> Any:
    request = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Accept": "application/json"}
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail")
        except (json.JSONDecodeError, AttributeError, OSError):
            detail = None
        if exc.code == 409:
            raise Refused(str(detail or exc.reason)) from None
        if exc.code == 401:
            raise CliError(
                "the admin API refused the request (401): pass a valid --token-file"
            ) from None
        raise CliError(f"admin API error {exc.code}: {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(
            f"cannot reach the admin API at {base}: {reason}: is the CA running? check "
            "--admin-url (env BULWARK_ADMIN_URL)"
        ) from None
    except json.JSONDecodeError:
        raise CliError(f"the admin API at {base} did not answer JSON") from None


def _token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read --token-file {path}: {exc.strerror}") from None


def _print_state(state: dict[str, Any]) -> None:
    for role in ("active", "prepared", "retired"):
        slot = state.get(role)
        if not slot:
            print(f"{role:<9} -")
            continue
        extra = f"  until {slot['until']}" if slot.get("until") else ""
        print(f"{role:<9} {slot['id'][:16]}  {slot['subject']}  since {slot['since']}{extra}")
    print(f"bundle    {len(state.get('bundle', []))} root(s)")
    print(f"due       {state.get('due')}")


def _run(args: argparse.Namespace) -> int:
    verb = args.rotate_command
    try:
        base = admin_base_url(args.admin_url)
        token = _token(args.token_file)
        if verb == "status":
            state = call(base, token, "GET", "/v1/ca/rotation")
        else:
            query = "?force=true" if getattr(args, "force", False) else ""
            state = call(base, token, "POST", f"/v1/ca/rotation/{verb}{query}")
    except Refused as exc:
        print(f"bulwark ca rotate {verb}: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (CliError, InvalidValue) as exc:
        print(f"bulwark ca rotate {verb}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    emit(state, args.output, lambda: _print_state(state))
    return EXIT_OK


def register_rotate(ca_sub: Any) -> None:
    """Add `rotate status|prepare|activate|retire` under `bulwark ca`."""
    common = admin_client_flags(
        token_help="file holding the admin bearer token (required for every verb but status)"
    )
    rotate = ca_sub.add_parser(
        "rotate",
        help="rotate the CA to a new key (prepared/active/retired slots)",
        description=(
            "Move the CA slots of a CA started with --ca-rotation new-key. Exit 1 when the CA "
            "refuses because the step does not apply now, 2 when it cannot be asked."
        ),
    )
    sub = rotate.add_subparsers(dest="rotate_command", metavar="ACTION", required=True)
    sub.add_parser("status", parents=[common], help="the slots and what is due next")
    sub.add_parser("prepare", parents=[common], help="put a new root (new key) in the bundle")
    for name, text, force in (
        ("activate", "sign with the prepared CA", "before the propagation delay is over"),
        ("retire", "drop the retired CA from the bundle", "before its last leaf expired"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--force", action="store_true", help=f"even {force}")
    for p in sub.choices.values():
        p.set_defaults(handler=_run)


__all__ = ["register_rotate"]
