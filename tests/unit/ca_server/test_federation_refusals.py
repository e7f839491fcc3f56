"""The CA's federation refusing a peer's bundle, in-process against a real TLS endpoint on
loopback: every refusal keeps the last good bundle, is counted under its reason (label sets
there from the start) and logged in one line naming the peer and the reason; an endpoint that
trickles its answer a byte a second is cut off by one deadline on the whole fetch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca_server.spiffe.federation import (
    FEDERATION_REFUSALS,
    FederationPeer,
    FederationStore,
    Federator,
)
from certs.spiffe_id import TrustDomain
from tests.support.bundle_server import (
    ScriptedEndpoint,
    Serve,
    Step,
    Trickle,
    bundle,
    jwt_jwk,
    leaf_jwk,
    root_jwk,
)

PEER = TrustDomain("peer.test")
ROOT, KEY = root_jwk(), jwt_jwk("k1")
GOOD = bundle([ROOT, KEY], sequence=5)
NEWER = bundle([ROOT, KEY, jwt_jwk("k2")], sequence=6)


@pytest.fixture
def endpoint_factory() -> Iterator[list[ScriptedEndpoint]]:
    """The endpoints a test started, stopped after it."""
    started: list[ScriptedEndpoint] = []
    yield started
    for endpoint in started:
        endpoint.stop()


def federator(tmp_path: Path, endpoint: ScriptedEndpoint, **fields: float) -> Federator:
    peer = FederationPeer(trust_domain=PEER, url=endpoint.url, profile="https_web")
    return Federator(peers=(peer,), store=FederationStore(tmp_path / "federation"), **fields)  # type: ignore[arg-type]


def serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[ScriptedEndpoint], *script: Step
) -> ScriptedEndpoint:
    endpoint = ScriptedEndpoint(tmp_path, list(script)).start()
    started.append(endpoint)
    monkeypatch.setenv("SSL_CERT_FILE", str(endpoint.ca_file))  # the https_web trust store
    return endpoint


def kept_kids(fed: Federator) -> set[str]:
    kept = fed.store.get(PEER)
    return {str(k["kid"]) for k in kept.jwt_authorities} if kept else set()


SYMMETRIC = {"use": "jwt-svid", "kid": "s", "kty": "oct", "k": "c2hhcmVkLXNlY3JldA"}
REFUSALS = [
    ("symmetric_key", bundle([ROOT, KEY, SYMMETRIC], sequence=7)),
    ("sequence_regressed", bundle([ROOT, KEY], sequence=4)),
    ("not_a_ca", bundle([leaf_jwk(), KEY], sequence=7)),
    ("unknown_key_type", bundle([ROOT, {**KEY, "kty": "XYZ"}], sequence=7)),
    ("private_key", bundle([ROOT, {**KEY, "d": "AAAA"}], sequence=7)),
]


def test_each_refusal_keeps_the_last_good_bundle_counts_and_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    endpoint_factory: list[ScriptedEndpoint],
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps = [Serve(GOOD), *(Serve(doc) for _, doc in REFUSALS), Serve(NEWER)]
    fed = federator(tmp_path, serve(tmp_path, monkeypatch, endpoint_factory, *steps))
    fed.seed()
    text = fed.exposition()
    for reason in FEDERATION_REFUSALS:  # every label set exists before the first refusal
        line = f'bulwark_federation_bundle_refusals_total{{trust_domain="peer.test",reason="{reason}"}} 0'
        assert line in text
    assert asyncio.run(fed.refresh_once(fed.peers[0])) > 0
    assert kept_kids(fed) == {"k1"}
    caplog.set_level(logging.WARNING, logger="ca_server.spiffe.federation")
    for reason, _ in REFUSALS:
        caplog.clear()
        assert asyncio.run(fed.refresh_once(fed.peers[0])) < 0, reason
        assert kept_kids(fed) == {"k1"}, reason  # the last good bundle stays
        assert fed.health["peer.test"].refusals[reason] == 1
        (line,) = [r.getMessage() for r in caplog.records]
        assert "bundle of peer.test" in line and f"refused ({reason})" in line
        assert "c2hhcmVkLXNlY3JldA" not in line
    assert asyncio.run(fed.refresh_once(fed.peers[0])) > 0
    assert kept_kids(fed) == {"k1", "k2"}  # a good, newer bundle is taken again
    assert b'"oct"' not in fed.store.path(PEER).read_bytes()
    assert 'reason="symmetric_key"} 1' in fed.exposition()


def test_a_trickling_endpoint_is_cut_off_by_one_deadline_on_the_whole_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint_factory: list[ScriptedEndpoint]
) -> None:
    """Defect: http.client's timeout applied to each read, so an endpoint sending a byte a
    second held the fetch for as long as it liked, and its bundle was then accepted."""
    endpoint = serve(tmp_path, monkeypatch, endpoint_factory, Serve(GOOD), Trickle(NEWER))
    fed = federator(tmp_path, endpoint, fetch_deadline_s=2.0)
    assert asyncio.run(fed.refresh_once(fed.peers[0])) > 0
    started = time.monotonic()
    assert asyncio.run(fed.refresh_once(fed.peers[0])) < 0
    # not a timing goal: the trickle of a ~600-byte answer would take ten minutes
    assert time.monotonic() - started < 60
    assert endpoint.served == ["serve", "trickle"]
    assert fed.health["peer.test"].refusals["too_slow"] == 1
    assert "within 2 s" in fed.health["peer.test"].last_error
    assert kept_kids(fed) == {"k1"}
