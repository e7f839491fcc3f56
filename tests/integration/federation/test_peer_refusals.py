"""A real CA process federating with a misbehaving peer endpoint (real TLS on loopback, profile
https_web): it publishes a symmetric key, then a lower `spiffe_sequence`, then trickles its
answer a byte per second. The CA refuses each, keeps serving the last good bundle (admin API,
FetchTrustBundles: nothing symmetric ever reaches agents), counts each under its reason and
logs one line naming the peer and the reason; then takes the next good bundle."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from protos.bulwark.v1 import identity_pb2, identity_pb2_grpc
from tests.support.bundle_server import (
    ScriptedEndpoint,
    Serve,
    Step,
    Trickle,
    bundle,
    jwt_jwk,
    root_jwk,
)
from tests.support.ca_client import channel
from tests.support.ca_process import RunningCa

PEER = "peer.test"
ROOT, KEY = root_jwk(PEER), jwt_jwk("k1")
SECRET = "c2hhcmVkLXNlY3JldA"
SCRIPT: list[Step] = [
    Serve(bundle([ROOT, KEY], sequence=5)),
    Serve(bundle([ROOT, KEY, {"use": "jwt-svid", "kid": "s", "kty": "oct", "k": SECRET}], sequence=7)),
    Serve(bundle([ROOT, KEY], sequence=4)),
    Trickle(bundle([ROOT, KEY, jwt_jwk("k2")], sequence=6)),
    Serve(bundle([ROOT, KEY, jwt_jwk("k2")], sequence=6)),
]  # fmt: skip


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[tuple[RunningCa, ScriptedEndpoint]]:
    endpoint = ScriptedEndpoint(tmp_path, SCRIPT).start()
    flag = f"{PEER}={endpoint.url},profile=https_web"
    running = RunningCa(
        data_dir=tmp_path / "data",
        args=("--workers", "1", "--federate-with", flag),
        env={"SSL_CERT_FILE": str(endpoint.ca_file)},
    )
    try:
        yield running.start(), endpoint
    finally:
        running.stop()
        endpoint.stop()


def refusals(ca: RunningCa) -> dict[str, float]:
    text = urllib.request.urlopen(f"{ca.admin_url}/metrics", timeout=10).read().decode()
    prefix = f'bulwark_federation_bundle_refusals_total{{trust_domain="{PEER}",reason="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def kept(ca: RunningCa) -> dict[str, Any] | None:
    url = f"{ca.admin_url}/v1/federated-bundles"
    doc: dict[str, Any] = json.loads(urllib.request.urlopen(url, timeout=10).read())
    return doc.get(PEER)


def served_to_agents(ca: RunningCa) -> bytes:
    token = ca.mint_token("demo", "frontend")
    stub = identity_pb2_grpc.WorkloadIdentityServiceStub(channel(ca.grpc_addr, ca.root_cert_path))
    response = stub.FetchTrustBundles(
        identity_pb2.FetchTrustBundlesRequest(),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=10,
    )
    return bytes(response.bundles[PEER])


def kids(doc: dict[str, Any] | None) -> set[str]:
    return {k["kid"] for k in (doc or {}).get("keys", []) if k["use"] == "jwt-svid"}


def until(check: Callable[[], bool], what: str, ca: RunningCa, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}:\n{ca.log()[-3000:]}"
        time.sleep(0.2)


def test_a_peer_that_misbehaves_is_refused_and_the_last_good_bundle_kept(
    ca: tuple[RunningCa, ScriptedEndpoint],
) -> None:
    running, endpoint = ca
    counts = refusals(running)
    assert set(counts) >= {"symmetric_key", "sequence_regressed", "too_slow", "not_a_ca"}
    until(lambda: kids(kept(running)) == {"k1"}, "the first bundle was taken", running)
    for reason in ("symmetric_key", "sequence_regressed", "too_slow"):
        until(lambda r=reason: refusals(running)[r] == 1, f"a {reason} refusal", running)  # type: ignore[misc]
        assert kids(kept(running)) == {"k1"}, reason  # the last good bundle, still served
        assert SECRET not in served_to_agents(running).decode()
    until(lambda: kids(kept(running)) == {"k1", "k2"}, "the next good bundle was taken", running)
    assert endpoint.served[:4] == ["serve", "serve", "serve", "trickle"]
    log = running.log()
    for reason in ("symmetric_key", "sequence_regressed", "too_slow"):
        assert f"bundle of {PEER} refused ({reason})" in log, log[-3000:]
    assert SECRET not in log and "Traceback" not in log
    assert json.loads(served_to_agents(running))["spiffe_sequence"] == 6
