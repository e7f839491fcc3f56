"""Issue 22.5: two CA processes on one PostgreSQL record share one JWT-SVID key set. A token
minted through either replica validates against the bundle fetched from the other, before,
during and after a key rotation (keys live seconds here); the keys are kept in the record's
database, never in a log."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from ca_server.record.ledger.database import parse_record_url
from ca_server.record.ledger.dialects import connect
from tests.support.ca_client import channel, fetch_trust_bundle, mint_jwt_svid, validate_jwt_svid
from tests.support.ca_process import start_ca
from tests.support.postgres import PostgresCluster

ACTIVE_LIFE_S = 6
AUD = "spiffe://cluster.local/ns/demo/sa/backend"


@pytest.mark.slow
def test_a_token_from_one_replica_validates_with_the_other_replicas_bundle_across_rotations(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    url = postgres_cluster.database("jwtkeys")
    flags = (
        "--record", url,
        "--jwt-key-active-life", f"{ACTIVE_LIFE_S}s",
        "--jwt-svid-max-ttl", "4s",
        "--jwt-svid-ttl", "4s",
    )  # fmt: skip
    cas = {n: start_ca(tmp_path / n, *flags, workers=2) for n in ("a", "b")}
    signed_with: set[str] = set()
    checked = 0
    try:
        deadline = time.monotonic() + 3 * ACTIVE_LIFE_S
        while time.monotonic() < deadline:
            tokens, bundles = {}, {}
            for name, ca in cas.items():
                token = ca.mint_token("demo", "frontend")
                with channel(ca.grpc_addr, ca.root_cert_path) as chan:
                    tokens[name] = mint_jwt_svid(chan, token=token, audiences=[AUD])
                    bundles[name] = fetch_trust_bundle(chan, token=token)
            for minted_by, svid in tokens.items():
                for fetched_from, doc in bundles.items():
                    try:
                        validate_jwt_svid(svid, doc, AUD)
                    except jwt.PyJWTError as exc:
                        pytest.fail(f"minted by {minted_by}, bundle of {fetched_from}: {exc}")
                    checked += 1
                signed_with.add(jwt.get_unverified_header(svid)["kid"])
            time.sleep(0.3)
    finally:
        for ca in cas.values():
            ca.stop()
    assert len(signed_with) >= 3, f"keys did not rotate: {signed_with}"
    session = connect(parse_record_url(url))
    try:
        row = session.query_one("SELECT version, document FROM jwt_key_set WHERE id = 1")
    finally:
        session.close()
    assert row is not None and "PRIVATE KEY" in str(row[1])  # the shared keys live there
    for ca in cas.values():
        assert "PRIVATE KEY" not in ca.log() and "Traceback" not in ca.log()
    print(f"\n{checked} cross-replica validations, {len(signed_with)} signing keys")
