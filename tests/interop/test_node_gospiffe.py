"""go-spiffe v2 callers of several uids on a node agent's socket (issue 23, unix attestor).

The same go-spiffe build as test_gospiffe.py (`gospiffe-check`), copied where other users
may run it, and run as uid 4101, 4102 and an unmapped 4999 through `setpriv`: each mapped
uid's `X509Source` returns its own SVID (verified by go-spiffe's `x509svid.Verify` against the
bundle) and its JWT-SVID names it; the unmapped uid gets nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import short_dir
from tests.support.ca_process import RunningCa
from tests.support.gobuild import built_binaries
from tests.support.node_agent import (
    NodeAgentProcess,
    node_ca,
    run_as,
    start_node_agent,
    write_unix_identities,
)

HERE = Path(__file__).resolve().parent
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/demo/sa/backend"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCa]:
    with node_ca(tmp_path_factory.mktemp("node-gospiffe") / "ca") as running:
        yield running


@pytest.fixture(scope="module")
def node(ca: RunningCa) -> Iterator[tuple[NodeAgentProcess, Path]]:
    built = built_binaries(
        HERE / "build-gospiffe.sh", ("gospiffe-check",), env_var="BULWARK_GOSPIFFE_BIN"
    )
    with short_dir() as work:
        binary = work / "gospiffe-check"
        shutil.copy2(built / "gospiffe-check", binary)
        binary.chmod(0o755)
        identities = write_unix_identities(
            work / "identities.yaml",
            [({"uid": 4101}, "demo/frontend"), ({"uid": 4102}, "demo/backend")],
        )
        agent = start_node_agent(ca, work, unix_identities=identities)
        try:
            yield agent, binary
        finally:
            agent.stop()


def check(
    node: tuple[NodeAgentProcess, Path], uid: int, *args: str
) -> tuple[int, dict[str, object], str]:
    agent, binary = node
    done = run_as(
        uid, uid, [str(binary), args[0], "-socket", str(agent.socket), "-timeout", "8s", *args[1:]]
    )
    out = json.loads(done.stdout) if done.returncode == 0 else {}
    return done.returncode, out, done.stderr


def test_each_uid_gets_its_own_x509_svid(node: tuple[NodeAgentProcess, Path]) -> None:
    for uid, expected in ((4101, FRONTEND), (4102, BACKEND)):
        code, out, err = check(node, uid, "x509")
        assert code == 0, err
        assert out["spiffe_id"] == expected


def test_each_uid_gets_its_own_jwt_svid(node: tuple[NodeAgentProcess, Path]) -> None:
    code, out, err = check(node, 4102, "jwt", "-audience", "db")
    assert code == 0, err
    assert out["spiffe_id"] == BACKEND and out["audience"] == ["db"]


def test_an_unmapped_uid_gets_nothing(node: tuple[NodeAgentProcess, Path]) -> None:
    """go-spiffe retries every status but Canceled and InvalidArgument (docs/COMPATIBILITY.md
    §2), so its source waits out its deadline; each attempt was refused with
    PERMISSION_DENIED naming the uid (the py-spiffe tests read the status itself)."""
    code, out, err = check(node, 4999, "x509")
    assert code == 1 and out == {}
    assert "NewX509Source: context deadline exceeded" in err, err
    assert "caller refused: no identity for uid 4999" in node[0].log()
