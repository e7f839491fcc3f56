"""The agent's intake of the CA's trust bundles, in-process: a refused document (symmetric or
private key, a leaf as authority, weak RSA, unknown key type) keeps that domain's last good
bundle, never reaches the JWT bundles served to workloads, and is counted and logged once."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest

from agent.metrics import TRUST_BUNDLE_REFUSALS, AgentMetrics
from agent.state.cache import SecretCache
from agent.state.trust_bundles import intake
from agent.upstream.bundle_poller import BundlePoller
from certs.spiffe_id import TrustDomain
from tests.support.bundle_server import bundle, jwt_jwk, leaf_jwk, root_jwk

OWN = TrustDomain("cluster.local")
ROOT, KEY = root_jwk("peer.test"), jwt_jwk("peer-key")
OWN_DOC = bundle([root_jwk("cluster.local"), jwt_jwk("own-key")], sequence=1)
GOOD = bundle([ROOT, KEY], sequence=3)
SECRET = "c2hhcmVkLXNlY3JldA"
BAD = [
    ("symmetric_key", [ROOT, KEY, {"use": "jwt-svid", "kid": "s", "kty": "oct", "k": SECRET}]),
    ("private_key", [ROOT, {**KEY, "d": SECRET}]),
    ("not_a_ca", [leaf_jwk(), KEY]),
    ("unknown_key_type", [ROOT, {**KEY, "kty": "XYZ"}]),
]


def served_jwks(documents: dict[str, bytes], previous: Any = None) -> dict[str, Any]:
    bundles, _ = intake(OWN, documents, previous)
    return {td: json.loads(jwks) for td, jwks in bundles.jwt_bundles().items()}


@pytest.mark.parametrize(("reason", "keys"), BAD, ids=[b[0] for b in BAD])
def test_a_refused_document_keeps_the_domains_last_good_bundle(
    reason: str, keys: list[dict[str, Any]]
) -> None:
    before, _ = intake(OWN, {"cluster.local": OWN_DOC, "peer.test": GOOD})
    docs = {"cluster.local": OWN_DOC, "peer.test": bundle(keys, sequence=4)}
    after, refusals = intake(OWN, docs, before)
    assert [(r.name, r.reason) for r in refusals] == [("peer.test", reason)]
    assert after.for_trust_domain("peer.test") == before.for_trust_domain("peer.test")
    assert after.version == before.version  # nothing changes for Envoy or workloads
    jwks = served_jwks(docs)  # with nothing to keep, the domain is left out
    assert set(jwks) == {"spiffe://cluster.local"}
    assert SECRET not in json.dumps(jwks) and SECRET not in refusals[0].message


class ScriptedCa:
    """Stands in for the CA's FetchTrustBundles: hands out the next documents each poll."""

    def __init__(self, *answers: dict[str, bytes]) -> None:
        self.answers = list(answers)

    async def trust_bundles(self) -> tuple[str, dict[str, bytes]]:
        return "cluster.local", self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_the_poller_counts_and_logs_each_new_refusal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    oct_doc = bundle(BAD[0][1], sequence=4)
    ca = ScriptedCa(
        {"cluster.local": OWN_DOC, "peer.test": GOOD},
        {"cluster.local": OWN_DOC, "peer.test": oct_doc},
        {"cluster.local": OWN_DOC, "peer.test": oct_doc},  # the same document again
    )
    cache, metrics = SecretCache(), AgentMetrics()
    for reason in TRUST_BUNDLE_REFUSALS:  # pre-created label sets
        assert f'istio_agent_trust_bundle_refusals_total{{reason="{reason}"}} 0' in metrics.render()
    poller = BundlePoller(
        ca,  # type: ignore[arg-type]
        cache,
        trust_domain=OWN,
        max_interval=timedelta(seconds=30),
        metrics=metrics,
    )
    caplog.set_level(logging.WARNING, logger="agent.upstream.bundle_poller")
    for _ in range(3):
        await poller.poll()
    assert metrics.value("trust_bundle_refusals_total", reason="symmetric_key") == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert "peer.test" in line and "symmetric_key" in line and SECRET not in line
    bundles = cache.snapshot.bundles
    assert bundles is not None
    peer = json.loads(bundles.jwt_bundles()["spiffe://peer.test"])
    assert [k["kid"] for k in peer["keys"]] == ["peer-key"]  # last good, no `oct` key
