"""Issue 22.5 on a real API server: two CA replicas share one JWT-SVID key set in Secret
`bulwark-jwt-keys`, rotated by the Lease holder alone. A token minted through either replica
validates against the bundle of the other, across key rotations (keys live seconds here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from lightkube import Client
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Secret

from tests.k8s.conftest import create_service_account, request_token
from tests.support.ca_client import channel, fetch_trust_bundle, mint_jwt_svid, validate_jwt_svid
from tests.support.ca_process import RunningCa, start_ca
from tests.support.kube_harness import ControlPlane

ACTIVE_LIFE_S = 6
AUDIENCE = "spiffe://cluster.local/ns/jwt/sa/backend"
STORED = "JWT-SVID key set stored in secret"


def _start_pair(control_plane: ControlPlane, ns: str, tmp_path: Path) -> dict[str, RunningCa]:
    started: dict[str, RunningCa] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = start_ca(
                tmp_path / name,
                "--kubeconfig", str(control_plane.admin_kubeconfig),
                "--kube-namespace", ns, "--kube-identity", name, "--kube-lease-duration", "4",
                "--jwt-key-active-life", f"{ACTIVE_LIFE_S}s",
                "--jwt-svid-max-ttl", "4s", "--jwt-svid-ttl", "4s",
                env={"KUBECONFIG": ""},
            )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("r-0", "r-1")]
    for t in threads:
        t.start()  # together: both race to store the first key set
    for t in threads:
        t.join(120)
    if errors:
        for ca in started.values():
            ca.stop()
        raise errors[0]
    return started


def _holder(client: Client, ns: str) -> str:
    lease = client.get(Lease, "bulwark-ca-leader", namespace=ns)
    return str(lease.spec.holderIdentity) if lease.spec else ""


def _until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def test_replicas_share_jwt_keys_rotated_by_the_leader_alone(
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    ns = make_namespace("jwtkeys")
    create_service_account(admin_client, ns, "frontend")
    token = request_token(admin_client, ns, "frontend", audiences=["istio-ca"])
    replicas = _start_pair(control_plane, ns, tmp_path)
    try:
        _until("a leader holds the lease", lambda: _holder(admin_client, ns) in replicas, 30)
        leader = _holder(admin_client, ns)
        (follower,) = (n for n in replicas if n != leader)
        writes_before = replicas[follower].log().count(STORED)
        signed_with: set[str] = set()
        deadline = time.monotonic() + 3 * ACTIVE_LIFE_S
        while time.monotonic() < deadline:
            tokens, bundles = {}, {}
            for name, ca in replicas.items():
                with channel(ca.grpc_addr, ca.root_cert_path) as chan:
                    tokens[name] = mint_jwt_svid(chan, token=token, audiences=[AUDIENCE])
                    bundles[name] = fetch_trust_bundle(chan, token=token)
            for minted_by, svid in tokens.items():
                signed_with.add(jwt.get_unverified_header(svid)["kid"])
                for fetched_from, doc in bundles.items():
                    try:
                        validate_jwt_svid(svid, doc, AUDIENCE)
                    except jwt.PyJWTError as exc:
                        raise AssertionError(
                            f"minted by {minted_by}, bundle of {fetched_from}: {exc}"
                        ) from exc
            time.sleep(0.3)
        assert len(signed_with) >= 3, f"keys did not rotate: {signed_with}"
        assert _holder(admin_client, ns) == leader, "the lease moved during the test"
        assert replicas[follower].log().count(STORED) == writes_before, "a follower rotated"
        assert replicas[leader].log().count(STORED) >= 2
        secret = admin_client.get(Secret, "bulwark-jwt-keys", namespace=ns)
        assert secret.type == "Opaque" and secret.data is not None and "keys.json" in secret.data
        for ca in replicas.values():
            assert "PRIVATE KEY" not in ca.log() and "Traceback" not in ca.log()
    finally:
        for ca in replicas.values():
            ca.stop()
