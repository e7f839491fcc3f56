"""The agent and the file system: OUTPUT_CERTS, FILE_MOUNTED_CERTS, root file, file-* secrets.

`FileSecrets` loads watched files into a secret cache: the root file (part of
ROOTCA) and the `file-cert:`/`file-root:` resources, which any identity may be
served, and with FILE_MOUNTED_CERTS the SVID itself, which is one identity's.
`OutputWriter` writes one cache's SVID out; it is given that cache to follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from agent.errors import FileSecretError, TooManyResources, UnknownResource
from agent.files.watch import Contents, FileWatcher, Problems
from agent.logs import LogBudget, printable
from agent.metrics import AgentMetrics
from agent.state.cache import FileSecret, SecretCache, Snapshot
from agent.state.svid import RootBundle, Svid
from certs import istio_files
from certs.errors import CertsError
from certs.files import write_atomic
from certs.keys import load_private_key
from certs.pem import load_certificates
from certs.verify import spiffe_id_of

log = logging.getLogger(__name__)

FILE_CERT_PREFIX = "file-cert:"
FILE_ROOT_PREFIX = "file-root:"
MAX_FILE_RESOURCES = 64  # distinct file-cert:/file-root: names watched at once, all clients
MAX_FILE_RESOURCES_PER_STREAM = 16  # one SDS stream or FetchSecrets call
MAX_NAME_CHARS = 8192  # two paths of PATH_MAX


def file_resource_paths(name: str) -> tuple[Path, ...] | None:
    """The files behind `file-cert:<cert>~<key>` / `file-root:<path>`; None for other names."""
    if len(name) > MAX_NAME_CHARS and name.startswith((FILE_CERT_PREFIX, FILE_ROOT_PREFIX)):
        raise UnknownResource(f"resource name of {len(name)} characters is too long")
    if name.startswith(FILE_CERT_PREFIX):
        cert, sep, key = name[len(FILE_CERT_PREFIX) :].partition("~")
        if not sep or not cert or not key:
            raise UnknownResource(
                f"resource {printable(name)!r} must look like file-cert:<cert path>~<key path>"
            )
        paths: tuple[Path, ...] = (Path(cert), Path(key))
    elif name.startswith(FILE_ROOT_PREFIX):
        path = name[len(FILE_ROOT_PREFIX) :]
        if not path:
            raise UnknownResource(f"resource {printable(name)!r} must look like file-root:<path>")
        paths = (Path(path),)
    else:
        return None
    if any("\x00" in str(p) for p in paths):
        raise UnknownResource(f"resource {printable(name)!r} names a path with a NUL byte")
    return paths


class FileSecrets:
    """Loads watched files into the cache; a file that stops parsing keeps its last good value.

    File resources are reference-counted: each SDS stream (or FetchSecrets call) that names
    one holds it until the stream ends or drops the name, then the watch and the cached
    secret go, so no client can use up the slots for the agent's lifetime.
    """

    def __init__(
        self,
        *,
        cache: SecretCache,
        watcher: FileWatcher,
        metrics: AgentMetrics,
        now: Callable[[], datetime],
    ) -> None:
        self._cache = cache
        self._watcher = watcher
        self._metrics = metrics
        self._now = now
        self._holders: dict[str, int] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._log_budget = LogBudget()

    @property
    def resource_count(self) -> int:
        """How many distinct file resources are watched now."""
        return len(self._holders)

    def hold(self, name: str) -> None:
        """Count one more holder of `name` (a file-cert:/file-root: resource); starts its watch.

        Synchronous, so a holder cancelled while the files load still owns a slot to release.
        """
        paths = file_resource_paths(name)
        if paths is None:
            raise UnknownResource(f"{printable(name)!r} is not a file resource")
        if name in self._holders:
            self._holders[name] += 1
            return
        if len(self._holders) >= MAX_FILE_RESOURCES:
            raise TooManyResources(
                f"the agent already watches {MAX_FILE_RESOURCES} file resources; "
                f"{printable(name)!r} refused"
            )
        self._holders[name] = 1
        loading = asyncio.ensure_future(
            self._watcher.watch(
                name,
                paths,
                lambda contents, problems: self._load_resource(name, contents, problems),
            )
        )
        self._loading[name] = loading
        loading.add_done_callback(lambda done: self._loaded(name, done))

    def _loaded(self, name: str, done: asyncio.Future[None]) -> None:
        if self._loading.get(name) is done:
            del self._loading[name]

    async def loaded(self, name: str) -> None:
        """Wait until the first read of `name`'s files is in the cache."""
        loading = self._loading.get(name)
        if loading is not None:
            await asyncio.shield(loading)

    async def acquire(self, name: str) -> None:
        """`hold` then `loaded`: serve `name` until as many `release` calls."""
        self.hold(name)
        await self.loaded(name)

    def release(self, name: str) -> None:
        """One holder of `name` is done; the last one stops the watch and drops the secret."""
        count = self._holders.get(name, 0)
        if count > 1:
            self._holders[name] = count - 1
            return
        self._holders.pop(name, None)
        self._watcher.unwatch(name)
        self._cache.set_file_secret(name, None)
        self._cache.set_file_error(name, "")

    async def watch_root_file(self, path: Path) -> None:
        """Push the roots in `path` as part of ROOTCA whenever the file changes."""
        await self._watcher.watch(
            f"root:{path}", (path,), lambda c, p: self._load_root_file(path, c, p)
        )

    async def watch_mounted_certs(self, directory: Path) -> None:
        """FILE_MOUNTED_CERTS: the SVID and roots come from `directory`, not from a CA."""
        paths = (
            directory / istio_files.CERT_CHAIN,
            directory / istio_files.KEY,
            directory / istio_files.ROOT_CERT,
        )
        await self._watcher.watch(
            "mounted", paths, lambda c, p: self._load_mounted(directory, c, p)
        )

    def _load_resource(self, name: str, contents: Contents, problems: Problems) -> None:
        try:
            secret = _file_secret(name, contents, problems)
        except FileSecretError as exc:
            self._metrics.inc("num_file_secret_failures_total")
            dropped = self._log_budget.take()  # any local client can name failing files
            if dropped is not None:
                more = f" ({dropped} similar lines dropped)" if dropped else ""
                log.warning("%s%s", exc.public_message, more)
            self._cache.set_file_error(name, exc.public_message)
            return
        self._cache.set_file_secret(name, secret)
        self._cache.set_file_error(name, "")

    def _load_root_file(self, path: Path, contents: Contents, problems: Problems) -> None:
        data = contents[0]
        if data is None and not problems:
            log.info("root file %s is absent; ROOTCA holds the CA's roots only", path)
            self._cache.set_file_roots(None)
            return
        try:
            if data is None:
                raise CertsError(problems[path])
            roots = RootBundle.of(load_certificates(data, what=str(path)))
        except CertsError as exc:
            self._metrics.inc("num_file_watcher_failures_total")
            log.warning("root file %s not loaded, keeping the previous roots: %s", path, exc)
            return
        self._cache.set_file_roots(roots)

    def _load_mounted(self, directory: Path, contents: Contents, problems: Problems) -> None:
        chain_pem, key_pem, root_pem = contents
        if chain_pem is None or key_pem is None or root_pem is None:
            why = "; ".join(problems.values())
            self._cache.set_svid_error(
                f"waiting for {istio_files.CERT_CHAIN}, {istio_files.KEY}, {istio_files.ROOT_CERT} in {directory}"
                + (f" ({why})" if why else "")
            )
            return
        try:
            chain = load_certificates(chain_pem, what=str(directory / istio_files.CERT_CHAIN))
            roots = RootBundle.of(
                load_certificates(root_pem, what=str(directory / istio_files.ROOT_CERT))
            )
            key = load_private_key(key_pem)
        except (CertsError, ValueError) as exc:
            self._metrics.inc("num_file_watcher_failures_total")
            log.warning("mounted certificates in %s not loaded: %s", directory, exc)
            self._cache.set_svid_error(f"mounted certificates in {directory} cannot be used")
            return
        try:
            spiffe_id = spiffe_id_of(chain[0])
        except CertsError:
            spiffe_id = None
        self._cache.set_svid(
            Svid(
                spiffe_id=spiffe_id, key=key, chain=tuple(chain), roots=roots, issued_at=self._now()
            )
        )


def _file_secret(name: str, contents: Contents, problems: Problems) -> FileSecret:
    paths = file_resource_paths(name) or ()
    missing = [
        problems.get(p) or f"{printable(str(p))} does not exist"
        for p, c in zip(paths, contents, strict=True)
        if c is None
    ]
    if missing:
        raise FileSecretError(f"{printable(name)}: cannot read {'; '.join(missing)}")
    try:
        if name.startswith(FILE_ROOT_PREFIX):
            root = contents[0] or b""
            load_certificates(root, what=str(paths[0]))
            return FileSecret(name=name, trusted_ca=root)
        chain, key = contents[0] or b"", contents[1] or b""
        load_certificates(chain, what=str(paths[0]))
        load_private_key(key)
    except (CertsError, ValueError) as exc:
        raise FileSecretError(f"{printable(name)}: {exc}") from None
    return FileSecret(name=name, certificate_chain=chain, private_key=key)


class OutputWriter:
    """OUTPUT_CERTS: key.pem (0600), cert-chain.pem, root-cert.pem, rewritten on every change."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._written: tuple[str, str] = ("", "")

    def write(self, snapshot: Snapshot) -> bool:
        """Write what changed since last time; True if anything was written."""
        svid, roots = snapshot.svid, snapshot.roots
        if svid is None or roots is None:
            return False
        state = (svid.version, roots.version)
        if state == self._written:
            return False
        directory = self._directory
        if state[0] != self._written[0]:
            write_atomic(directory / istio_files.KEY, svid.key_pem, mode=0o600)
            write_atomic(directory / istio_files.CERT_CHAIN, svid.chain_pem, mode=0o644)
        write_atomic(directory / istio_files.ROOT_CERT, roots.pem, mode=0o644)
        self._written = state
        log.info(
            "wrote certificate %s and %d root(s) to %s", svid.serial, len(roots.certs), directory
        )
        return True

    async def run(self, cache: SecretCache) -> None:
        box = cache.subscribe()
        try:
            while (snapshot := await box.get()) is not None:
                try:
                    self.write(snapshot)
                except OSError as exc:
                    log.error("cannot write OUTPUT_CERTS to %s: %s", self._directory, exc.strerror)
        finally:
            cache.unsubscribe(box)
