"""Foreign trust bundles: checked on the way in, kept in `<data-dir>/federation/<td>.json`.

The format and its checks are `certs.spiffe_bundle`'s; this module adds the federation's
policy: a foreign bundle holds at least one key, and replaces the kept one only if its
`spiffe_sequence` does not go back (`accept`). The supervisor writes (atomically);
workers and the admin API read, cached on each file's identity, and serve only what
passes today's checks (a file kept by an older version with a key now refused is left out).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from certs.errors import InvalidBundle
from certs.files import write_atomic
from certs.spiffe_bundle import SpiffeBundle, check_successor, parse_bundle
from certs.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

_Identity = tuple[int, int, int]


def foreign_bundle(data: bytes) -> SpiffeBundle:
    """A federated trust domain's bundle document; `InvalidBundle` saying what is wrong."""
    bundle = parse_bundle(data)
    if not bundle.x509_authorities and not bundle.jwt_authorities:
        raise InvalidBundle("bundle has no `keys`")
    return bundle


class FederationStore:
    """One file per foreign trust domain, holding its last accepted bundle (JSON)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # file name -> (file identity, bundle or None if refused, its JSON as served)
        self._cache: dict[str, tuple[_Identity, SpiffeBundle | None, bytes]] = {}

    def path(self, trust_domain: TrustDomain) -> Path:
        return self.directory / f"{trust_domain}.json"

    def get(self, trust_domain: TrustDomain) -> SpiffeBundle | None:
        return self.bundles().get(str(trust_domain))

    def accept(self, trust_domain: TrustDomain, bundle: SpiffeBundle) -> bool:
        """Keep `bundle` unless its sequence goes back (`InvalidBundle`, the kept one stays);
        whether the kept content changed."""
        last = self.get(trust_domain)
        check_successor(last, bundle)
        if last is not None and last.to_json() == bundle.to_json():
            return False
        self.put(trust_domain, bundle)
        return True

    def put(self, trust_domain: TrustDomain, bundle: SpiffeBundle) -> None:
        write_atomic(self.path(trust_domain), bundle.to_json(), mode=0o600)

    def all(self) -> dict[str, bytes]:
        """Trust domain name -> bundle JSON, for every stored foreign domain."""
        return {name: entry[2] for name, entry in self._entries().items()}

    def bundles(self) -> dict[str, SpiffeBundle]:
        """Trust domain name -> bundle, for every stored foreign domain that passes the checks."""
        return {n: e[1] for n, e in self._entries().items() if e[1] is not None}

    def _entries(self) -> dict[str, tuple[_Identity, SpiffeBundle | None, bytes]]:
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            entry = self._load(name)
            if entry is not None and entry[1] is not None:
                out[name.removesuffix(".json")] = entry
        return out

    def _load(self, name: str) -> tuple[_Identity, SpiffeBundle | None, bytes] | None:
        path = self.directory / name
        try:
            st = os.stat(path)
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._cache.get(name)
            if cached is not None and cached[0] == identity:
                return cached
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        entry: tuple[_Identity, SpiffeBundle | None, bytes]
        try:
            bundle = foreign_bundle(data)
            entry = (identity, bundle, bundle.to_json())
        except InvalidBundle as exc:
            log.warning("federation: kept bundle %s is not served: %s", path, exc)
            entry = (identity, None, b"")
        self._cache[name] = entry
        return entry
