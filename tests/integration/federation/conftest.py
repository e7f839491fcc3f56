"""Fixtures of the federation suite: one federated pair of real CAs (a.test, b.test) for the
whole package, short per-test directories for agent sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.federation import FederatedPair, federated_pair


@pytest.fixture(scope="package")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatedPair]:
    with federated_pair(tmp_path_factory.mktemp("federation")) as cas:
        yield cas
