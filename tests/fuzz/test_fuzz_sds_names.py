"""Fuzzing the agent's SDS resource-name parser (agent/files/secrets.py `file_resource_paths`, used as
is): only UnknownResource escapes, and file names round-trip to their paths."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.errors import AgentError
from agent.files.secrets import FILE_CERT_PREFIX, FILE_ROOT_PREFIX, file_resource_paths

PATH = st.lists(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), min_size=1, max_size=5).map(
    lambda parts: (
        "/" + "/".join(p for p in parts if p not in (".", ".."))
        if any(p not in (".", "..") for p in parts)
        else "/x"
    )
)
NAMES = st.one_of(
    st.text(max_size=200),
    st.text(max_size=100).map(lambda t: FILE_CERT_PREFIX + t),
    st.text(max_size=100).map(lambda t: FILE_ROOT_PREFIX + t),
)


@given(NAMES)
def test_names_raise_only_agent_errors(name: str) -> None:
    try:
        paths = file_resource_paths(name)
    except AgentError:
        return
    if paths is not None:
        assert all(isinstance(p, Path) for p in paths)


@given(PATH, PATH)
def test_file_cert_round_trips(cert: str, key: str) -> None:
    assert file_resource_paths(f"{FILE_CERT_PREFIX}{cert}~{key}") == (Path(cert), Path(key))


@given(PATH)
def test_file_root_round_trips(path: str) -> None:
    assert file_resource_paths(f"{FILE_ROOT_PREFIX}{path}") == (Path(path),)
