"""Fixtures of the Envoy suite: a per-test `Mesh` of real agents and real Envoys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.ca_process import RunningCa
from tests.support.mesh import Mesh


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def sds_api(request: pytest.FixtureRequest) -> str:
    """Envoy's SDS flavour: StreamSecrets (Istio's choice) or DeltaSecrets."""
    return str(request.param)


@pytest.fixture
def mesh(shared_ca: RunningCa, work: Path) -> Iterator[Mesh]:
    """Agents of the module's shared CA; Envoys speak StreamSecrets as Istio's do."""
    with ExitStack() as stack:
        yield Mesh(shared_ca, work, stack)


@pytest.fixture
def any_sds_mesh(shared_ca: RunningCa, work: Path, sds_api: str) -> Iterator[Mesh]:
    """As `mesh`, once with StreamSecrets and once with DeltaSecrets."""
    with ExitStack() as stack:
        yield Mesh(shared_ca, work, stack, sds_api)
