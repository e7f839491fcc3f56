"""`bulwark inspect`: what a PEM chain holds, whether it verifies, whether its leaf is an X.509-SVID."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from certs.errors import CertsError
from certs.keys import describe_key
from certs.pem import load_certificates, serial_hex, sha256_fingerprint
from certs.verify import svid_violations, verify_chain


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show, verify and check a PEM certificate chain",
        description=(
            "Print each certificate of a PEM chain (leaf first): SPIFFE ID, serial, validity and time "
            "left, key type, issuer, position. With --root, verify the chain against those roots. "
            "The leaf gets an X.509-SVID conformance verdict naming any broken rule. "
            "Exit status: 0 all good, 1 the chain fails verification or the leaf is not a valid SVID, "
            "2 the input cannot be read."
        ),
    )
    p.add_argument(
        "file", nargs="?", default="-", help="PEM file, or - for standard input (default)"
    )
    p.add_argument("--root", help="PEM file with the trusted root(s) to verify against")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def describe(cert: x509.Certificate, position: str, now: datetime) -> dict[str, Any]:
    uris: list[str] = []
    dns: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    left = cert.not_valid_after_utc - now
    return {
        "position": position,
        "spiffe_id": uris[0] if len(uris) == 1 else None,
        "uri_sans": uris,
        "dns_sans": dns,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "seconds_left": int(left.total_seconds()),
        "key": describe_key(cert.public_key()),
        "ca": is_ca,
        "sha256": sha256_fingerprint(cert),
    }


def _positions(chain: list[x509.Certificate]) -> list[str]:
    out = []
    for i, cert in enumerate(chain):
        if i == 0:
            out.append("leaf")
        elif cert.issuer == cert.subject:
            out.append(f"root ({i})")
        else:
            out.append(f"intermediate ({i})")
    return out


def _human_left(seconds: int) -> str:
    if seconds <= 0:
        return "EXPIRED"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h left"
    return f"{hours}h{minutes}m left" if hours else f"{minutes}m{rest % 60}s left"


def run(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        chain = load_certificates(data, what=args.file)
        roots = load_certificates(Path(args.root).read_bytes(), what=args.root) if args.root else []
    except (OSError, CertsError) as exc:
        print(f"bulwark inspect: {exc}", file=sys.stderr)
        return 2
    certs = [describe(c, pos, now) for c, pos in zip(chain, _positions(chain), strict=True)]
    violations = svid_violations(chain[0])
    verification: dict[str, Any] = {"checked": bool(roots), "ok": None, "error": None}
    if roots:
        try:
            verify_chain(chain, roots, now=now)
            verification["ok"] = True
        except CertsError as exc:
            verification.update(ok=False, error=str(exc))
    report = {
        "certificates": certs,
        "verification": verification,
        "svid": {"conforms": not violations, "violations": violations},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_human(report)
    return 1 if violations or verification["ok"] is False else 0


def _print_human(report: dict[str, Any]) -> None:
    for cert in report["certificates"]:
        print(f"[{cert['position']}]")
        if cert["spiffe_id"]:
            print(f"  SPIFFE ID   {cert['spiffe_id']}")
        if cert["dns_sans"]:
            print(f"  DNS SANs    {', '.join(cert['dns_sans'])}")
        print(f"  subject     {cert['subject'] or '(empty)'}")
        print(f"  issuer      {cert['issuer'] or '(empty)'}")
        print(f"  serial      {cert['serial']}")
        print(
            f"  valid       {cert['not_before']} .. {cert['not_after']} ({_human_left(cert['seconds_left'])})"
        )
        print(f"  key         {cert['key']}{'  (CA)' if cert['ca'] else ''}")
        print(f"  sha256      {cert['sha256']}")
    verification = report["verification"]
    if not verification["checked"]:
        print("chain:  not verified (give --root)")
    elif verification["ok"]:
        print("chain:  OK, verifies against the given root(s)")
    else:
        print(f"chain:  FAILED: {verification['error']}")
    svid = report["svid"]
    if svid["conforms"]:
        print("X.509-SVID: leaf conforms")
    else:
        print("X.509-SVID: leaf does NOT conform:")
        for violation in svid["violations"]:
            print(f"  - {violation}")
