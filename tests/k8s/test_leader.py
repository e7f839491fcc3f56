"""Lease leader election against a real API server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from lightkube import Client
from lightkube.resources.coordination_v1 import Lease

from ca_server.kube import LeaderElector, LeaseTiming

TIMING = LeaseTiming(lease_duration=3.0, renew_deadline=2.0, retry_period=0.3)


def wait_for(cond: Callable[[], bool], seconds: float) -> float:
    """Poll `cond`; return how long it took, fail after `seconds`."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < seconds, f"condition not met within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def electors(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> Iterator[tuple[str, list[LeaderElector]]]:
    ns = make_namespace("lease")
    made = [
        LeaderElector(admin_client, namespace=ns, identity=f"replica-{i}", timing=TIMING)
        for i in range(2)
    ]
    for e in made:
        e.start()
    yield ns, made
    for e in made:
        e.stop(release=False)


def leaders(made: list[LeaderElector]) -> list[LeaderElector]:
    return [e for e in made if e.is_leader()]


def test_exactly_one_leader_and_the_lease_names_it(
    admin_client: Client, electors: tuple[str, list[LeaderElector]]
) -> None:
    ns, made = electors
    wait_for(lambda: len(leaders(made)) == 1, 10)
    time.sleep(2 * TIMING.retry_period)
    (leader,) = leaders(made)
    lease = admin_client.get(Lease, "bulwark-ca-leader", namespace=ns)
    assert lease.spec is not None and lease.spec.holderIdentity == leader.identity
    assert lease.spec.leaseDurationSeconds == 3


def test_crashed_leader_is_replaced_within_the_lease_duration(
    electors: tuple[str, list[LeaderElector]],
) -> None:
    _, made = electors
    wait_for(lambda: len(leaders(made)) == 1, 10)
    (old,) = leaders(made)
    (other,) = [e for e in made if e is not old]
    old.stop(release=False)  # like a SIGKILL: the Lease is left to expire
    took = wait_for(other.is_leader, TIMING.lease_duration + 2 * TIMING.retry_period + 1)
    assert took <= TIMING.lease_duration + 2 * TIMING.retry_period + 1


def test_released_lease_is_taken_at_once(electors: tuple[str, list[LeaderElector]]) -> None:
    _, made = electors
    wait_for(lambda: len(leaders(made)) == 1, 10)
    (old,) = leaders(made)
    (other,) = [e for e in made if e is not old]
    old.stop(release=True)
    wait_for(other.is_leader, TIMING.lease_duration)


def test_leader_that_loses_the_lease_stops_leading_at_once(
    admin_client: Client, electors: tuple[str, list[LeaderElector]]
) -> None:
    ns, made = electors
    wait_for(lambda: len(leaders(made)) == 1, 10)
    (leader,) = leaders(made)
    for e in made:
        if e is not leader:
            e.stop(release=False)
    lease = admin_client.get(Lease, "bulwark-ca-leader", namespace=ns)
    assert lease.spec is not None
    lease.spec.holderIdentity = "someone-else"
    lease.spec.leaseDurationSeconds = 60
    admin_client.replace(lease)
    wait_for(lambda: not leader.is_leader(), 2 * TIMING.retry_period + 1)
