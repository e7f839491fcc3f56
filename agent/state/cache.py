"""The secret cache: the one place holding what the agent serves, fanned out to subscribers.

Every change produces a new immutable `Snapshot`. Subscribers (SDS streams,
Workload API streams, the file writer) each own a latest-wins `Mailbox`, as
in SPIRE's agent manager: a slow reader skips intermediate states and always
sees the newest one, and a fast writer never blocks on it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from agent.state.svid import RootBundle, Svid
from agent.state.trust_bundles import TrustBundles

_EMPTY: Mapping[str, FileSecret] = MappingProxyType({})
_NO_ERRORS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSecret:
    """A `file-cert:` or `file-root:` resource as last read from disk."""

    name: str
    certificate_chain: bytes = b""
    private_key: bytes = b""
    trusted_ca: bytes = b""

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for part in (self.certificate_chain, self.private_key, self.trusted_ca):
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationRoots:
    """What the SDS `ROOTCA` holds: the own trust domain's roots (the root file's and the
    CA's) and each federated trust domain's roots, kept apart so that Envoy can tie every
    root to its own domain (`agent.endpoints.resources`)."""

    trust_domain: str  # the own one
    own: RootBundle
    federated: tuple[tuple[str, RootBundle], ...] = ()  # by name, never the own domain

    @property
    def version(self) -> str:
        if not self.federated:
            return self.own.version  # as before federation: one bundle, its hash
        digest = hashlib.sha256(f"{self.trust_domain}\0{self.own.version}".encode())
        for name, roots in self.federated:
            digest.update(f"\0{name}\0{roots.version}".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything served at one moment. `roots` joins the root file's and the CA's roots."""

    generation: int = 0
    svid: Svid | None = None
    file_roots: RootBundle | None = None
    files: Mapping[str, FileSecret] = field(default_factory=lambda: _EMPTY)
    svid_error: str = ""  # why there is no (new) certificate, for status pages
    file_errors: Mapping[str, str] = field(default_factory=lambda: _NO_ERRORS)
    bundles: TrustBundles | None = None  # the CA's trust bundles (own and federated)
    roots: RootBundle | None = None  # derived: file roots then the CA's, set by the cache
    # derived: `roots` and every federated trust domain's roots (the SDS ROOTCA)
    validation: ValidationRoots | None = None

    def with_roots(self) -> Snapshot:
        """This snapshot with `roots` recomputed from the root file and the SVID's roots."""
        groups = [b.certs for b in (self.file_roots, self.svid.roots if self.svid else None) if b]
        roots = RootBundle.of(*groups) if groups else None
        if roots is None:
            return replace(self, roots=None, validation=None)
        own = self.bundles.trust_domain.name if self.bundles else ""
        if self.svid is not None and self.svid.spiffe_id is not None:
            own = self.svid.spiffe_id.trust_domain.name
        federated = tuple(
            (b.trust_domain.name, RootBundle.of(b.x509_roots))
            for b in (self.bundles.federated if self.bundles else ())
            if b.x509_roots and b.trust_domain.name != own
        )
        validation = ValidationRoots(trust_domain=own, own=roots, federated=federated)
        return replace(self, roots=roots, validation=validation)


class Mailbox:
    """Holds only the newest snapshot; `get` waits for one newer than the last it returned."""

    def __init__(self, first: Snapshot) -> None:
        self._latest = first
        self._event = asyncio.Event()
        self._event.set()
        self._closed = False

    def put(self, snapshot: Snapshot) -> None:
        self._latest = snapshot
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def get(self) -> Snapshot | None:
        """The newest snapshot not yet returned, or None once the cache has shut down."""
        await self._event.wait()
        self._event.clear()
        return None if self._closed else self._latest


class SecretCache:
    """Current secrets plus subscribers; all methods run on the event loop."""

    def __init__(self) -> None:
        self._snapshot = Snapshot()
        self._mailboxes: set[Mailbox] = set()
        self._closed = False

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self) -> Mailbox:
        """A mailbox that already holds the current snapshot (closed if the cache is)."""
        box = Mailbox(self._snapshot)
        if self._closed:
            box.close()
        else:
            self._mailboxes.add(box)
        return box

    def unsubscribe(self, box: Mailbox) -> None:
        self._mailboxes.discard(box)

    @property
    def subscriber_count(self) -> int:
        return len(self._mailboxes)

    def set_svid(self, svid: Svid) -> None:
        self._publish(svid=svid, svid_error="")

    def set_svid_error(self, message: str) -> None:
        if message != self._snapshot.svid_error:
            self._publish(svid_error=message)

    def set_file_roots(self, roots: RootBundle | None) -> None:
        current = self._snapshot.file_roots
        if (current and current.version) != (roots and roots.version):
            self._publish(file_roots=roots)

    def set_file_error(self, name: str, message: str) -> None:
        """Why the file resource `name` cannot be (re)loaded; empty once it loads again."""
        if self._snapshot.file_errors.get(name, "") == message:
            return
        errors = {k: v for k, v in self._snapshot.file_errors.items() if k != name}
        if message:
            errors[name] = message
        self._publish(file_errors=MappingProxyType(errors))

    def set_file_secret(self, name: str, secret: FileSecret | None) -> None:
        current = self._snapshot.files.get(name)
        if (current and current.version) == (secret and secret.version):
            return
        files = dict(self._snapshot.files)
        if secret is None:
            files.pop(name, None)
        else:
            files[name] = secret
        self._publish(files=MappingProxyType(files))

    def set_trust_bundles(self, bundles: TrustBundles) -> None:
        """The CA's trust bundles; subscribers hear of it only when their content changed."""
        current = self._snapshot.bundles
        if current is None or current.version != bundles.version:
            self._publish(bundles=bundles)

    def close(self) -> None:
        """End every subscription: streams finish cleanly on shutdown."""
        self._closed = True
        for box in self._mailboxes:
            box.close()
        self._mailboxes.clear()

    def _publish(self, **changes: object) -> None:
        self._snapshot = replace(
            self._snapshot,
            generation=self._snapshot.generation + 1,
            **changes,  # type: ignore[arg-type]
        ).with_roots()
        for box in self._mailboxes:
            box.put(self._snapshot)
