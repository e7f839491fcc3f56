"""`--unix-identities FILE`: every bad entry named with its line, and first-match-wins matching.

Matching runs against real processes (this test process), through `PeerProcess` of a real
unix socket pair: the kernel's credentials and the executable /proc links.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.node.errors import NotAttested
from agent.node.peer import PeerProcess
from agent.node.unix_identities import UnixAttestor, load_unix_identities, parse_unix_identities
from certs.spiffe_id import SpiffeId, TrustDomain

TD = TrustDomain("cluster.local")


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_unix_identities(text, TD, "ids.yaml")
    return refused.value.public_message


def test_a_valid_file_gives_rules_in_order() -> None:
    rules = parse_unix_identities(
        """identities:
  - match: {uid: 4101}
    identity: demo/frontend
  - match: {gid: 4200, path: /usr/bin/envoy}
    identity: spiffe://cluster.local/ns/demo/sa/backend
  - match: {sha256: %s}
    identity: demo/hashed
"""
        % ("AB" * 32),
        TD,
        "ids.yaml",
    )
    assert [str(r.identity) for r in rules] == [
        "spiffe://cluster.local/ns/demo/sa/frontend",
        "spiffe://cluster.local/ns/demo/sa/backend",
        "spiffe://cluster.local/ns/demo/sa/hashed",
    ]
    assert (rules[0].uid, rules[1].gid, rules[1].path, rules[2].sha256) == (
        4101,
        4200,
        "/usr/bin/envoy",
        "ab" * 32,
    )
    assert [r.line for r in rules] == [2, 4, 6]


def test_every_bad_entry_is_reported_with_its_line() -> None:
    text = """identities:
  - match: {uid: 4101}
    identity: demo/frontend
  - match: {uid: -1}
    identity: demo/a
  - match: {user: root}
    identity: demo/b
  - match: {path: relative/bin}
    identity: demo/c
  - match: {sha256: nothex}
    identity: demo/d
  - match: {uid: 5}
    identity: spiffe://other.domain/ns/x/sa/y
  - match: {uid: 6}
    identity: spiffe://cluster.local/not/istio/shaped
  - match: {uid: 7}
    identity: Bad_Namespace/sa
  - match: {}
    identity: demo/e
  - identity: demo/f
  - match: {uid: "8"}
    identity: demo/g
    extra: 1
"""
    message = problems(text)
    for line, words in (
        (4, "uid '-1'"),
        (6, "unknown match key 'user'"),
        (8, "not an absolute path"),
        (10, "not 64 hex digits"),
        (12, "not in trust domain cluster.local"),
        (14, "/ns/<ns>/sa/<sa>"),
        (16, "namespace 'Bad_Namespace'"),
        (18, "'match' must map at least one"),
        (20, "missing 'match'"),
        (21, "unknown key 'extra'"),
    ):
        assert any(f"line {line} " in row and words in row for row in message.splitlines()), (
            line,
            words,
            message,
        )
    assert message.startswith("--unix-identities ids.yaml: 10 problem(s)")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "mapping with the key 'identities'"),
        ("identities: []", "non-empty list"),
        ("identities: [1]\nothers: 2", "unknown top-level key 'others'"),
        ("identities: [\n", "not YAML"),
    ],
)
def test_the_file_shape_is_checked(text: str, words: str) -> None:
    assert words in problems(text)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_unix_identities(tmp_path / "absent.yaml", TD)


@pytest.fixture
def me() -> Iterator[PeerProcess]:
    """This process, as the kernel names it to the other end of a socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    peer = PeerProcess.of_socket(theirs)
    try:
        yield peer
    finally:
        peer.close()
        ours.close()
        theirs.close()


async def test_the_first_entry_whose_every_key_matches_wins(me: PeerProcess) -> None:
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    digest = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    text = f"""identities:
  - match: {{uid: {os.getuid()}, path: /not/this}}
    identity: demo/wrong-path
  - match: {{uid: {os.getuid()}, gid: {os.getgid() + 1}}}
    identity: demo/wrong-gid
  - match: {{uid: {os.getuid()}, sha256: {"0" * 64}}}
    identity: demo/wrong-digest
  - match: {{path: {exe}, sha256: {digest}}}
    identity: demo/right
  - match: {{uid: {os.getuid()}}}
    identity: demo/later
"""
    attestor = UnixAttestor(parse_unix_identities(text, TD, "ids.yaml"), source="ids.yaml")
    attested = await attestor.attest(me)
    assert attested.spiffe_id == SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/right")
    assert attested.holder == f"process:{me.key}"
    assert f"pid {os.getpid()}" in attested.holder_name
    attestor.recheck(me, attested)  # the same process: no change


async def test_an_unmapped_caller_is_refused_naming_its_uid_and_path(me: PeerProcess) -> None:
    text = "identities:\n  - match: {uid: 4242}\n    identity: demo/other\n"
    attestor = UnixAttestor(parse_unix_identities(text, TD, "ids.yaml"), source="ids.yaml")
    with pytest.raises(NotAttested) as refused:
        await attestor.attest(me)
    message = refused.value.public_message
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    assert f"no identity for uid {os.getuid()}" in message and exe in message
    assert "ids.yaml" in message and sys.executable  # names the file
