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
from typing import Any

from ca_server.cli.admin_client import AdminClient, CliError, Refused, admin_client_flags
from certs.cli.exits import EXIT_NO, EXIT_OK, fail, report
from certs.cli.output import emit
from certs.values import InvalidValue


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
        client = AdminClient.from_args(args)
        if verb == "status":
            state = client.get("/v1/ca/rotation")
        else:
            query = "?force=true" if getattr(args, "force", False) else ""
            state = client.post(f"/v1/ca/rotation/{verb}{query}")
    except Refused as exc:
        report(f"ca rotate {verb}", f"refused: {exc.reason}")
        return EXIT_NO
    except (CliError, InvalidValue) as exc:
        return fail(f"ca rotate {verb}", str(exc))
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
