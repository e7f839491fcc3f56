"""Foreign trust bundles: checked on the way in, kept in `<data-dir>/federation/<td>.json`.

The supervisor writes (atomically); workers and the admin API read, cached on each file's
identity. A bundle is only ever replaced by a valid one: a failed or bad fetch keeps it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509

from certs.files import write_atomic
from certs.pem import bundle_pem
from certs.spiffe_id import TrustDomain

MAX_BUNDLE_BYTES = 1 << 20


class BadBundle(ValueError):
    """A bundle document that is not a SPIFFE bundle we can use."""


def parse_bundle(data: bytes) -> dict[str, Any]:
    """The bundle document of `data`; `BadBundle` unless it is a JWKS with at least one key."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BadBundle(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadBundle(f"bundle is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise BadBundle("bundle has no `keys`")
    for key in doc["keys"]:
        if not isinstance(key, dict) or key.get("use") not in ("x509-svid", "jwt-svid"):
            raise BadBundle("every bundle key needs `use` x509-svid or jwt-svid")
    x509_roots(doc)  # every x509-svid key must hold one certificate
    return doc


def x509_roots(doc: dict[str, Any]) -> list[x509.Certificate]:
    """The X.509 authorities of a bundle document."""
    roots = []
    for key in doc["keys"]:
        if key.get("use") != "x509-svid":
            continue
        x5c = key.get("x5c")
        if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
            raise BadBundle("an x509-svid key must have exactly one certificate in `x5c`")
        try:
            roots.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True)))
        except (ValueError, binascii.Error) as exc:
            raise BadBundle(f"an x509-svid key's certificate does not parse: {exc}") from None
    return roots


def sequence_of(doc: dict[str, Any]) -> int:
    seq = doc.get("spiffe_sequence")
    return seq if isinstance(seq, int) and seq >= 0 else 0


def refresh_hint_of(doc: dict[str, Any]) -> float | None:
    hint = doc.get("spiffe_refresh_hint")
    return float(hint) if isinstance(hint, int | float) and hint > 0 else None


def roots_pem(doc: dict[str, Any]) -> str:
    return bundle_pem(x509_roots(doc))


class FederationStore:
    """One file per foreign trust domain, holding its last accepted bundle (JSON)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, tuple[tuple[int, int, int], bytes]] = {}

    def path(self, trust_domain: TrustDomain) -> Path:
        return self.directory / f"{trust_domain}.json"

    def get(self, trust_domain: TrustDomain) -> dict[str, Any] | None:
        data = self.all().get(str(trust_domain))
        return parse_bundle(data) if data is not None else None

    def put(self, trust_domain: TrustDomain, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        write_atomic(self.path(trust_domain), data, mode=0o600)

    def all(self) -> dict[str, bytes]:
        """Trust domain name -> bundle JSON, for every stored foreign domain."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))
        except FileNotFoundError:
            return {}
        out: dict[str, bytes] = {}
        for name in names:
            path = self.directory / name
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._cache.get(name)
            if cached is None or cached[0] != identity:
                cached = (identity, path.read_bytes())
                self._cache[name] = cached
            out[name.removesuffix(".json")] = cached[1]
        return out
