"""PKCS#11 key custody on the command line (docs/HSM.md).

    bulwark ca serve ... --ca-key 'pkcs11:token=T;object=L' --pkcs11-module PATH
                         --pkcs11-pin-file FILE          (or the PIN in BULWARK_PKCS11_PIN)
    bulwark ca hsm init --ca-key 'pkcs11:token=T;object=L' [--key-type ec-p256|ec-p384|rsa-3072]
                        --pkcs11-module PATH --pkcs11-pin-file FILE
        make the key pair inside the HSM (CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_PRIVATE,
        a label and an ID) and print its full URI
    bulwark ca hsm show --ca-key URI --pkcs11-module PATH --pkcs11-pin-file FILE
        what the token says about the key: type, label, ID and custody attributes

The PIN is never a flag's value (`ps` would show it) and never printed. Exit 0 done, 2 on
any refusal, with one line naming the URI and the fix.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ca_server.hsm.settings import CA_KEY, MODULE, PIN_FILE
from certs.cli.output import add_output_flag, emit

if TYPE_CHECKING:
    from ca_server.hsm.keys import KeyInfo
    from ca_server.hsm.settings import Pkcs11Settings

# The flags a command that uses an HSM key takes (`ca serve` adds `--jwt-keys-in-hsm`).
KEY_OPTIONS = (CA_KEY, MODULE, PIN_FILE)


def settings_from_args(
    args: argparse.Namespace, environ: os._Environ[str] | dict[str, str] | None = None
) -> Pkcs11Settings | None:
    """The HSM settings the flags ask for, or None for file keys; a ConfigError names a flag."""
    from ca_server.errors import ConfigError
    from ca_server.hsm.pin import PIN_ENV, pin_from_env, pin_from_file
    from ca_server.hsm.settings import Pkcs11Settings
    from ca_server.hsm.uri import parse

    env = os.environ if environ is None else environ
    if not args.ca_key:
        stray = [f for f in ("pkcs11_module", "pkcs11_pin_file") if getattr(args, f, None)]
        if stray or getattr(args, "jwt_keys_in_hsm", False):
            raise ConfigError(
                "--pkcs11-module, --pkcs11-pin-file and --jwt-keys-in-hsm need --ca-key "
                "pkcs11:token=...;object=... (the key they are for)"
            )
        return None
    if not str(args.ca_key).lower().startswith("pkcs11:"):
        raise ConfigError(
            "--ca-key takes a PKCS#11 URI such as 'pkcs11:token=bulwark;object=root-2026'; a "
            "key file belongs in --cacerts-dir"
        )
    key = parse(args.ca_key)
    if not args.pkcs11_module:
        raise ConfigError(
            f"--ca-key {key} needs --pkcs11-module (the HSM's PKCS#11 library, e.g. "
            "/usr/lib/softhsm/libsofthsm2.so)"
        )
    from_env = pin_from_env(env)
    if args.pkcs11_pin_file and from_env is not None:
        raise ConfigError(f"give the PIN once: --pkcs11-pin-file or {PIN_ENV}, not both")
    if args.pkcs11_pin_file:
        pin = pin_from_file(Path(args.pkcs11_pin_file))
    elif from_env is not None:
        pin = from_env
    else:
        raise ConfigError(
            f"--ca-key {key} needs the token's user PIN: --pkcs11-pin-file FILE or {PIN_ENV}"
        )
    return Pkcs11Settings(
        module=Path(args.pkcs11_module),
        key=key,
        pin=pin,
        jwt_keys=bool(getattr(args, "jwt_keys_in_hsm", False)),
    )


def register_hsm(ca_sub: Any) -> None:
    """Add `hsm init|show` under `bulwark ca`."""
    top = ca_sub.add_parser(
        "hsm",
        help="make and show CA keys inside an HSM (PKCS#11)",
        description="Make the CA's key pair inside a PKCS#11 token, or show what the token "
        "says about it. The PIN comes from --pkcs11-pin-file or BULWARK_PKCS11_PIN.",
    )
    sub = top.add_subparsers(dest="hsm_command", metavar="ACTION", required=True)
    init = sub.add_parser(
        "init",
        help="make a key pair inside the HSM",
        description="Make a key pair inside the token with CKA_SENSITIVE true, CKA_EXTRACTABLE "
        "false, CKA_PRIVATE true, a label (object=) and an ID (id=, random when not given); "
        "print its full URI for `ca serve --ca-key`. An existing label or ID is refused.",
    )
    init.add_argument(
        "--key-type",
        default="ec-p256",
        choices=["ec-p256", "ec-p384", "rsa-3072"],
        help="key algorithm (default: ec-p256)",
    )
    show = sub.add_parser(
        "show", help="what the token says about a key", description="Show the key's type, "
        "label, ID and custody attributes as the token reports them (never key material).",
    )  # fmt: skip
    for p in (init, show):
        for option in KEY_OPTIONS:
            option.add_to(p)
        add_output_flag(p)
        p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ca_server.errors import ConfigError
    from certs.cli.exits import EXIT_OK, fail

    try:
        settings = settings_from_args(args)
        if settings is None:
            raise ConfigError("--ca-key pkcs11:token=...;object=... is required")
        info = _init(settings, args.key_type) if args.hsm_command == "init" else _show(settings)
    except (ConfigError, OSError) as exc:
        return fail(f"ca hsm {args.hsm_command}", exc)
    report = _report(info)
    emit(report, args.output, lambda: _print(report))
    return EXIT_OK


def _init(settings: Pkcs11Settings, key_type: str) -> KeyInfo:
    from ca_server.hsm.generate import generate_keypair
    from certs.keys import KeyType

    token = settings.token()
    try:
        token.open()
        return generate_keypair(token, settings.key, KeyType(key_type))
    finally:
        token.close()


def _show(settings: Pkcs11Settings) -> KeyInfo:
    from ca_server.hsm.keys import read_key_info

    token = settings.token()
    try:
        token.open()
        return read_key_info(token, settings.key)
    finally:
        token.close()


def _report(info: KeyInfo) -> dict[str, Any]:
    from certs.keys import spki_sha256

    return {
        "uri": str(info.uri),
        "storage": "pkcs11",
        "token": info.uri.token,
        "object": info.uri.object,
        "id": info.uri.id_hex,
        "key_type": info.key_type,
        "public_key_sha256": spki_sha256(info.public_key),
        "attributes": {
            "CKA_SENSITIVE": info.sensitive,
            "CKA_EXTRACTABLE": info.extractable,
            "CKA_PRIVATE": info.private,
            "CKA_SIGN": info.can_sign,
        },
        "custody_ok": not info.weaknesses(),
    }


def _print(report: dict[str, Any]) -> None:
    print(f"uri        {report['uri']}")
    print(f"key        {report['key_type']} (public key sha256 {report['public_key_sha256']})")
    attrs = ", ".join(f"{k}={'true' if v else 'false'}" for k, v in report["attributes"].items())
    print(f"attributes {attrs}")
    verdict = "stays in the HSM" if report["custody_ok"] else "does NOT meet Bulwark's custody"
    print(f"custody    {verdict}")


__all__ = ["KEY_OPTIONS", "register_hsm", "settings_from_args"]
