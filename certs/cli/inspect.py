"""`bulwark inspect`: what certificates or CSRs hold, whether a chain verifies, whether its leaf is an SVID."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certs.cli import blocks, describe
from certs.cli.output import add_output_flag, emit
from certs.errors import CertsError
from certs.values import time_left


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show, verify and check certificates, chains and CSRs",
        description=(
            "Print each certificate (leaf first) or CSR in PEM or DER input: SPIFFE ID, serial, "
            "validity and time left, key, signature algorithm, key usage, extended key usage, "
            "AKI/SKI. With --connect, inspect the chain a TLS server presents. With --root, "
            "verify the chain against those roots and explain a failure. The leaf gets an "
            "X.509-SVID conformance verdict naming any broken rule; text outside PEM blocks is "
            "reported. Exit status: 0 all good, 1 the chain fails verification, the leaf is "
            "not a valid SVID or a CSR's signature is bad, 2 the input cannot be read."
        ),
    )
    p.add_argument(
        "file", nargs="?", default="-", help="PEM or DER file, or - for standard input (default)"
    )
    p.add_argument("--root", help="PEM or DER file with the trusted root(s) to verify against")
    p.add_argument(
        "--connect", metavar="HOST:PORT", help="inspect the chain this TLS server serves"
    )
    p.add_argument(
        "--servername", help="TLS server name (SNI) to send with --connect (default: the host)"
    )
    p.add_argument(
        "--ca",
        metavar="ADMIN_URL",
        help="inspect a running CA through its admin API (GET /v1/ca): its intermediates and "
        "roots, and where its signing key lives (file, Kubernetes Secret, or pkcs11 token and "
        "object); HOST:PORT alone means http://",
    )
    add_output_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    signing_key: dict[str, Any] | None = None
    try:
        if args.ca:
            contents, signing_key = _ca_contents(args)
        else:
            contents = _load(args)
        roots = _read_file(args.root).certificates if args.root else []
    except (OSError, CertsError, ValueError) as exc:
        return _fail(args, _message(exc, args))
    report = build_report(contents, roots, now, source=args.ca or args.connect or args.file)
    if args.ca:  # CA certificates: the X.509-SVID verdict is for workload leaves
        report["signing_key"] = signing_key
        del report["svid"]
    emit(report, args.output, lambda: _print_human(report))
    if args.output == "table":
        for warning in report["warnings"]:
            print(f"bulwark inspect: warning: {warning}", file=sys.stderr)
    bad_csr = any(not c["signature_valid"] for c in report["csrs"])
    svid = report.get("svid", {"conforms": True})
    failed = report["verification"]["ok"] is False or not svid["conforms"]
    return 1 if failed or bad_csr else 0


def _load(args: argparse.Namespace) -> blocks.Contents:
    if args.connect:
        if args.file != "-":
            raise ValueError("give either FILE or --connect, not both")
        from certs.cli.served import served_chain

        return blocks.Contents(
            certificates=served_chain(args.connect, args.servername), encoding="TLS"
        )
    return _read_file(args.file)


def _ca_contents(args: argparse.Namespace) -> tuple[blocks.Contents, dict[str, Any] | None]:
    """The CA's certificates (intermediates first, then roots) and its signing key's place."""
    if args.file != "-" or args.connect:
        raise ValueError("give --ca alone, without FILE or --connect")
    from certs.cli.ca_info import fetch_ca

    info = fetch_ca(args.ca)
    pems = [c["pem"] for c in [*info.get("intermediates", []), *info.get("roots", [])]]
    contents = blocks.read("".join(pems).encode(), f"{args.ca}/v1/ca")
    return contents, info.get("signing_key")


def _read_file(name: str) -> blocks.Contents:
    data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    return blocks.read(data, "standard input" if name == "-" else name)


def _message(exc: Exception, args: argparse.Namespace) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename or args.file}: {exc.strerror or exc}"
    return str(exc)


def _fail(args: argparse.Namespace, message: str) -> int:
    if args.output in ("json", "yaml"):
        emit({"error": message}, args.output, lambda: None)
    else:
        print(f"bulwark inspect: {message}", file=sys.stderr)
    return 2


def build_report(
    contents: blocks.Contents, roots: list[Any], now: datetime, *, source: str
) -> dict[str, Any]:
    chain = contents.certificates
    certs = [
        describe.certificate(c, pos, now)
        for c, pos in zip(chain, describe.positions(chain), strict=True)
    ]
    from certs.verify import svid_violations

    violations = svid_violations(chain[0]) if chain else []
    return {
        "source": source,
        "encoding": contents.encoding,
        "warnings": contents.warnings,
        "certificates": certs,
        "csrs": [describe.csr(r) for r in contents.csrs],
        "verification": _verification(chain, roots, now),
        "svid": {"conforms": not violations, "violations": violations},
    }


def _verification(chain: list[Any], roots: list[Any], now: datetime) -> dict[str, Any]:
    result: dict[str, Any] = {"checked": bool(roots and chain), "ok": None, "error": None}
    if not result["checked"]:
        return result
    from certs.cli.diagnose import explain
    from certs.verify import verify_chain

    try:
        verify_chain(chain, roots, now=now)
        result["ok"] = True
    except CertsError as exc:
        result.update(ok=False, error=explain(chain, roots, now) or str(exc), detail=str(exc))
    return result


def _print_human(report: dict[str, Any]) -> None:
    if "signing_key" in report:
        _print_signing_key(report["signing_key"])
    for cert in report["certificates"]:
        _print_cert(cert)
    for csr in report["csrs"]:
        _print_csr(csr)
    if not report["certificates"]:
        return
    verification = report["verification"]
    if not verification["checked"]:
        print("chain:  not verified (give --root)")
    elif verification["ok"]:
        print("chain:  OK, verifies against the given root(s)")
    else:
        print(f"chain:  FAILED: {verification['error']}")
    svid = report.get("svid")
    if svid is None:
        return
    if svid["conforms"]:
        print("X.509-SVID: leaf conforms")
    else:
        print("X.509-SVID: leaf does NOT conform:")
        for violation in svid["violations"]:
            print(f"  - {violation}")


def _print_signing_key(key: dict[str, Any] | None) -> None:
    print("[CA signing key]")
    if not key:
        _line("where", "not reported by this CA")
        return
    where = {"pkcs11": "in an HSM (PKCS#11)", "file": "a key file (0600)"}.get(
        key["storage"], "the Kubernetes Secret istio-ca-secret"
    )
    _line("where", where)
    _line("token", key.get("token"))
    _line("object", key.get("object"))
    _line("id", key.get("id"))
    _line("key", key.get("key_type"))


def _line(label: str, value: Any) -> None:
    if value not in (None, "", []):
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"  {label:<12}{shown}")


def _print_cert(cert: dict[str, Any]) -> None:
    print(f"[{cert['position']}]")
    _line("SPIFFE ID", cert["spiffe_id"])
    _line("DNS SANs", cert["dns_sans"])
    _line("IP SANs", cert["ip_sans"])
    _line("subject", cert["subject"] or "(empty)")
    _line("issuer", cert["issuer"] or "(empty)")
    _line("serial", cert["serial"])
    left = time_left(cert["seconds_left"])
    state = "left" if cert["seconds_left"] > 0 else "EXPIRED"
    _line("valid", f"{cert['not_before']} .. {cert['not_after']} ({left} {state})")
    _line("key", f"{cert['key']}{'  (CA)' if cert['ca'] else ''}")
    _line("signature", cert["signature_algorithm"])
    _line("key usage", cert["key_usage"])
    _line("ext usage", cert["extended_key_usage"])
    _line("SKI", cert["subject_key_id"])
    _line("AKI", cert["authority_key_id"])
    _line("sha256", cert["sha256"])


def _print_csr(csr: dict[str, Any]) -> None:
    print("[CSR]")
    _line("SPIFFE ID", csr["spiffe_id"])
    _line("URI SANs", csr["uri_sans"] if not csr["spiffe_id"] else None)
    _line("DNS SANs", csr["dns_sans"])
    _line("subject", csr["subject"] or "(empty)")
    _line("key", csr["key"])
    _line(
        "signature",
        f"{csr['signature_algorithm']} ({'valid' if csr['signature_valid'] else 'INVALID'})",
    )
    _line("key usage", csr["key_usage"])
    _line("ext usage", csr["extended_key_usage"])
