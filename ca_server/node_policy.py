"""`--node-identity-policy FILE`: which identities a node account may ask certificates for.

Outside Kubernetes nothing binds a node agent to the workloads it serves, so the operator
says it: a YAML mapping from each node account (`ns/sa`) to the `ns/sa` patterns it may
impersonate, e.g. `{"bulwark-system/node-agent": ["demo/*", "shop/checkout"]}`. A pattern's
namespace and service account are matched separately; `*` stands for any run of characters
within its part and `?` for one. The file is read once, at start: every bad line is reported
(with its line number) in one `ConfigError`, so the CA exits 2 saying what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ca_server.errors import ConfigError
from certs.errors import InvalidSpiffeId
from certs.spiffe_id import check_namespace, check_service_account

MAX_POLICY_BYTES = 1024 * 1024
_NAMESPACE_PATTERN = re.compile(r"[a-z0-9*?-]{1,63}")
_ACCOUNT_PATTERN = re.compile(r"[a-z0-9.*?-]{1,253}")


def _part_regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


@dataclass(frozen=True, slots=True)
class NodeGrant:
    """One node account and the `ns/sa` patterns it may impersonate."""

    account: str  # "ns/sa" of the node agent
    patterns: tuple[str, ...]
    _compiled: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = []
        for pattern in self.patterns:
            namespace, account = pattern.split("/")
            compiled.append((re.compile(_part_regex(namespace)), re.compile(_part_regex(account))))
        object.__setattr__(self, "_compiled", tuple(compiled))

    def allows(self, namespace: str, account: str) -> bool:
        return any(
            ns.fullmatch(namespace) is not None and sa.fullmatch(account) is not None
            for ns, sa in self._compiled
        )


@dataclass(frozen=True, slots=True)
class NodeIdentityPolicy:
    """The parsed policy file; `source` names it in messages."""

    grants: tuple[NodeGrant, ...]
    source: str = ""

    def grant_of(self, node_account: str) -> NodeGrant | None:
        return next((g for g in self.grants if g.account == node_account), None)

    def allows(self, node_account: str, namespace: str, account: str) -> bool:
        grant = self.grant_of(node_account)
        return grant is not None and grant.allows(namespace, account)


def load_node_policy(path: Path) -> NodeIdentityPolicy:
    """The policy in `path`, or `ConfigError` listing every problem with its line."""
    what = f"--node-identity-policy {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_POLICY_BYTES:
        raise ConfigError(f"{what}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text") from None
    return parse_node_policy(text, source=str(path))


def parse_node_policy(text: str, *, source: str = "policy") -> NodeIdentityPolicy:
    """Parse the policy's YAML text (see the module docstring), or `ConfigError`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"--node-identity-policy {source}: {where}{problem}") from None
    if root is None or (isinstance(root, yaml.MappingNode) and not root.value):
        raise ConfigError(
            f"--node-identity-policy {source}: names no node account; write "
            '{"NS/NODE-AGENT-SA": ["NS/SA-PATTERN", ...]}'
        )
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"--node-identity-policy {source}: line {root.start_mark.line + 1}: expected a "
            "mapping of node accounts (NS/SA) to lists of NS/SA patterns"
        )
    problems: list[str] = []
    grants: list[NodeGrant] = []
    seen: set[str] = set()
    for key, value in root.value:
        line = key.start_mark.line + 1
        account = _node_account(key, problems, line)
        patterns = _patterns(value, problems)
        if account is None or patterns is None:
            continue
        if account in seen:
            problems.append(f"line {line}: node account {account} is listed twice")
            continue
        seen.add(account)
        grants.append(NodeGrant(account, patterns))
    if problems:
        raise ConfigError(f"--node-identity-policy {source}:\n  " + "\n  ".join(problems))
    return NodeIdentityPolicy(tuple(grants), source=source)


def _node_account(key: yaml.Node, problems: list[str], line: int) -> str | None:
    if not isinstance(key, yaml.ScalarNode) or not isinstance(key.value, str):
        problems.append(f"line {line}: a node account must be a string NS/SA")
        return None
    text = key.value.strip()
    namespace, sep, account = text.partition("/")
    if not sep or "/" in account:
        problems.append(f"line {line}: node account {text!r} is not NS/SA")
        return None
    try:
        check_namespace(namespace)
        check_service_account(account)
    except InvalidSpiffeId as exc:
        problems.append(f"line {line}: node account {text!r}: {exc}")
        return None
    return text


def _patterns(value: yaml.Node, problems: list[str]) -> tuple[str, ...] | None:
    line = value.start_mark.line + 1
    if not isinstance(value, yaml.SequenceNode):
        problems.append(f'line {line}: expected a list of NS/SA patterns, e.g. ["demo/*"]')
        return None
    patterns: list[str] = []
    ok = True
    for item in value.value:
        item_line = item.start_mark.line + 1
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:str":
            problems.append(f"line {item_line}: a pattern must be a string NS/SA")
            ok = False
            continue
        problem = _pattern_problem(item.value)
        if problem:
            problems.append(f"line {item_line}: pattern {item.value!r} {problem}")
            ok = False
            continue
        patterns.append(item.value)
    return tuple(patterns) if ok else None


def _pattern_problem(pattern: str) -> str:
    """Why `pattern` is no NS/SA pattern, or "" when it is one."""
    namespace, sep, account = pattern.partition("/")
    if not sep or "/" in account:
        return "is not NS/SA (one '/' between a namespace and a service-account pattern)"
    if not _NAMESPACE_PATTERN.fullmatch(namespace):
        return "has a bad namespace part: lowercase letters, digits, '-', '*' and '?' only"
    if not _ACCOUNT_PATTERN.fullmatch(account):
        return "has a bad service-account part: lowercase letters, digits, '-', '.', '*', '?'"
    return ""
