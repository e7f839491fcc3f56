"""The `unix` attestor, for VMs and bare metal: uid, gid, executable path and digest -> identity.

`--unix-identities FILE` maps callers to identities; the first entry whose every given key
matches wins (SPIRE's `unix` workload attestor has the same selectors, docs/COMPATIBILITY.md §4):

    identities:
      - match: {uid: 4101}                       # any of: uid, gid, path, sha256
        identity: demo/frontend                  # ns/sa, or a full SPIFFE ID in the trust domain
      - match: {gid: 4200, path: /usr/bin/envoy}
        identity: spiffe://cluster.local/ns/demo/sa/backend

The file is read once, at start; every bad entry is reported with its line, and the agent does
not start. `uid` and `gid` are the credentials the kernel recorded at `connect`; `path` is the
executable the kernel links from `/proc/<pid>/exe`; `sha256` is the digest of that running
executable. A caller no entry matches is refused, naming its uid, gid and path.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.errors import ConfigError
from agent.logs import printable
from agent.node.attestation import Attestation
from agent.node.errors import CallerChanged, NotAttested
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain

if TYPE_CHECKING:
    from agent.node.peer import PeerProcess

MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 10_000
_KEYS = ("uid", "gid", "path", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT_TAG = "tag:yaml.org,2002:int"
_STR_TAG = "tag:yaml.org,2002:str"


class UnixRule(NamedTuple):
    """One entry: the keys it matches (None: any) and the identity it gives."""

    identity: SpiffeId
    line: int
    uid: int | None = None
    gid: int | None = None
    path: str | None = None
    sha256: str | None = None


def load_unix_identities(path: Path, trust_domain: TrustDomain) -> tuple[UnixRule, ...]:
    """The rules of `path`, or `ConfigError` listing every problem with its line."""
    try:
        with open(path, "rb") as source:
            data = source.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--unix-identities {path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"--unix-identities {path}: larger than {MAX_FILE_BYTES} bytes")
    return parse_unix_identities(data.decode("utf-8", "replace"), trust_domain, str(path))


def parse_unix_identities(
    text: str, trust_domain: TrustDomain, source: str
) -> tuple[UnixRule, ...]:
    import yaml  # only a unix-attested node agent reads YAML

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--unix-identities {source}: not YAML: {printable(str(exc))}") from None
    problems: list[str] = []
    rules = _rules(root, trust_domain, problems)
    if problems:
        raise ConfigError(
            f"--unix-identities {source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    return rules


def _rules(root: Any, trust_domain: TrustDomain, problems: list[str]) -> tuple[UnixRule, ...]:
    import yaml

    if not isinstance(root, yaml.MappingNode):
        problems.append("line 1: the file must be a mapping with the key 'identities'")
        return ()
    top = {k.value: v for k, v in root.value}
    for key in set(top) - {"identities"}:
        problems.append(f"unknown top-level key {printable(str(key))!r} (only 'identities')")
    entries = top.get("identities")
    if not isinstance(entries, yaml.SequenceNode) or not entries.value:
        problems.append("line 1: 'identities' must be a non-empty list of entries")
        return ()
    if len(entries.value) > MAX_ENTRIES:
        problems.append(f"more than {MAX_ENTRIES} entries")
        return ()
    rules = []
    for number, node in enumerate(entries.value, 1):
        rule = _rule(node, number, trust_domain, problems)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _rule(
    node: Any, number: int, trust_domain: TrustDomain, problems: list[str]
) -> UnixRule | None:
    import yaml

    where = f"line {node.start_mark.line + 1} (entry {number})"
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{where}: an entry is a mapping with 'match' and 'identity'")
        return None
    fields = {k.value: v for k, v in node.value}
    bad = sorted(set(fields) - {"match", "identity"})
    missing = [k for k in ("match", "identity") if k not in fields]
    if bad or missing:
        problems.append(
            f"{where}: "
            + "; ".join(
                [f"unknown key {printable(str(k))!r}" for k in bad]
                + [f"missing {k!r}" for k in missing]
            )
        )
        return None
    before = len(problems)
    match = _match(fields["match"], where, problems)
    identity = _identity(fields["identity"], trust_domain, where, problems)
    if len(problems) > before or identity is None:
        return None
    return UnixRule(identity=identity, line=node.start_mark.line + 1, **match)


def _match(node: Any, where: str, problems: list[str]) -> dict[str, Any]:
    import yaml

    if not isinstance(node, yaml.MappingNode) or not node.value:
        problems.append(f"{where}: 'match' must map at least one of {', '.join(_KEYS)}")
        return {}
    out: dict[str, Any] = {}
    for key_node, value in node.value:
        key = key_node.value
        if key not in _KEYS:
            problems.append(
                f"{where}: unknown match key {printable(str(key))!r} (use {', '.join(_KEYS)})"
            )
        elif key in out:
            problems.append(f"{where}: match key {key!r} given twice")
        elif not isinstance(value, yaml.ScalarNode):
            problems.append(f"{where}: match {key!r} must be a single value")
        elif key in ("uid", "gid"):
            number = _number(value.value) if value.tag == _INT_TAG else None
            if number is None or not 0 <= number < 2**32:
                problems.append(
                    f"{where}: {key} {printable(value.value)!r} is not a number 0..4294967295"
                )
            else:
                out[key] = number
        elif key == "path":
            if value.tag != _STR_TAG or not value.value.startswith("/") or "\0" in value.value:
                problems.append(f"{where}: path {printable(value.value)!r} is not an absolute path")
            else:
                out[key] = value.value
        elif not _SHA256.fullmatch(value.value.lower()):
            problems.append(f"{where}: sha256 {printable(value.value)!r} is not 64 hex digits")
        else:
            out[key] = value.value.lower()
    return out


def _number(text: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        return None


def _identity(
    node: Any, trust_domain: TrustDomain, where: str, problems: list[str]
) -> SpiffeId | None:
    import yaml

    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
        problems.append(f"{where}: identity must be ns/sa or a SPIFFE ID")
        return None
    text = node.value
    try:
        if text.startswith("spiffe://"):
            spiffe_id = SpiffeId.parse(text)
            if spiffe_id.trust_domain != trust_domain:
                problems.append(
                    f"{where}: identity {printable(text)!r} is not in trust domain {trust_domain}"
                )
                return None
            if spiffe_id.service_account() is None:
                problems.append(
                    f"{where}: identity {printable(text)!r} must be spiffe://{trust_domain}/ns/<ns>/sa/<sa> "
                    "(the only form the CA issues)"
                )
                return None
            return spiffe_id
        namespace, slash, account = text.partition("/")
        if not slash:
            problems.append(f"{where}: identity {printable(text)!r} must be ns/sa or a SPIFFE ID")
            return None
        return SpiffeId.for_service_account(trust_domain, namespace, account)
    except InvalidSpiffeId as exc:
        problems.append(f"{where}: identity {printable(text)!r}: {exc}")
        return None


class UnixAttestor:
    """Attests by uid, gid, executable path and digest against the rules of one file."""

    name = "unix"
    holders_are_processes = True

    def __init__(self, rules: tuple[UnixRule, ...], *, source: str) -> None:
        self._rules = rules
        self._source = source

    async def start(self) -> None:
        """Nothing to wait for: the rules were read at construction."""

    async def run(self) -> None:
        """Nothing to keep up to date."""

    def not_ready(self) -> str:
        return ""

    async def close(self) -> None:
        """Nothing held."""

    async def attest(self, peer: PeerProcess) -> Attestation:
        path = peer.exe_path()
        digest: str | None = None
        for rule in self._rules:
            if rule.uid is not None and rule.uid != peer.uid:
                continue
            if rule.gid is not None and rule.gid != peer.gid:
                continue
            if rule.path is not None and rule.path != path:
                continue
            if rule.sha256 is not None:
                if digest is None:
                    digest = await asyncio.to_thread(peer.exe_sha256)  # big binaries: off the loop
                if rule.sha256 != digest:
                    continue
            return Attestation(
                spiffe_id=rule.identity,
                holder=f"process:{peer.key}",
                holder_name=f"pid {peer.pid} (uid {peer.uid}, gid {peer.gid}, {printable(path)})",
                facts=(str(peer.uid), str(peer.gid), path),
            )
        raise NotAttested(
            f"no identity for uid {peer.uid} (gid {peer.gid}, path {printable(path)}, pid "
            f"{peer.pid}) in {self._source}"
        )

    def recheck(self, peer: PeerProcess, attestation: Attestation) -> None:
        uids, gids = peer.ids()
        uid, gid = int(attestation.facts[0]), int(attestation.facts[1])
        if (len(uids) > 1 and uids[1] != uid) or (len(gids) > 1 and gids[1] != gid):
            raise CallerChanged(
                f"the caller (pid {peer.pid}) now runs as uid {uids[1]} gid {gids[1]}, not the "
                f"uid {uid} gid {gid} it connected with; reconnect"
            )
        path = peer.exe_path()
        if path != attestation.facts[2]:
            raise CallerChanged(
                f"the caller (pid {peer.pid}) now runs {printable(path)}, not "
                f"{printable(attestation.facts[2])}; reconnect"
            )
