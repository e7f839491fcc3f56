"""Foreign trust bundles: checked on the way in, kept in `<data-dir>/federation/<td>.json`.

The supervisor writes (atomically); workers and the admin API read, cached on each file's
identity. A bundle is only ever replaced by a valid one: a failed or bad fetch keeps it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509

from certs.errors import InvalidBundle
from certs.files import write_atomic
from certs.pem import bundle_pem
from certs.spiffe_bundle import bundle_document, x509_authorities
from certs.spiffe_id import TrustDomain


class BadBundle(ValueError):
    """A bundle document that is not a SPIFFE bundle we can use."""


def parse_bundle(data: bytes) -> dict[str, Any]:
    """The bundle document of `data`; `BadBundle` unless it is a JWKS with at least one key,
    each of a known `use`."""
    try:
        doc = bundle_document(data)
    except InvalidBundle as exc:
        raise BadBundle(str(exc)) from None
    if not doc["keys"]:
        raise BadBundle("bundle has no `keys`")
    for key in doc["keys"]:
        if key.get("use") not in ("x509-svid", "jwt-svid"):
            raise BadBundle("every bundle key needs `use` x509-svid or jwt-svid")
    x509_roots(doc)  # every x509-svid key must hold one certificate
    return doc


def x509_roots(doc: dict[str, Any]) -> list[x509.Certificate]:
    """The X.509 authorities of a bundle document."""
    try:
        return x509_authorities(doc)
    except InvalidBundle as exc:
        raise BadBundle(str(exc)) from None


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
