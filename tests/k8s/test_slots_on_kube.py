"""Issue #17 on a real API server: two replicas with `--ca-rotation new-key`; the leader is
stopped in the middle of a rotation (a root prepared, not yet active) and the other replica
finishes it: activation after the propagation delay counted from the original prepare, then
the drop. The slots live in istio-ca-secret, the bundle in the root ConfigMaps."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Secret

from certs.pem import load_certificates
from tests.support.ca_process import RunningCa, start_ca
from tests.support.kube_harness import ControlPlane

DELAY_S = 6
TTL_S = 8


def _until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def _slots(client: Client, ns: str) -> dict[str, Any] | None:
    secret = client.get(Secret, "istio-ca-secret", namespace=ns)
    raw = (secret.data or {}).get("bulwark-slots.json")
    data: dict[str, Any] | None = json.loads(base64.b64decode(raw)) if raw else None
    return data


def _cm_roots(client: Client, ns: str) -> int:
    try:
        cm = client.get(ConfigMap, "istio-ca-root-cert", namespace=ns)
    except ApiError:
        return 0
    return len(load_certificates((cm.data or {}).get("root-cert.pem", "").encode() or b"x"))


def _start_pair(
    control_plane: ControlPlane, ns: str, tmp_path: Path, token: Path
) -> dict[str, RunningCa]:
    started: dict[str, RunningCa] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = start_ca(
                tmp_path / name,
                "--kubeconfig", str(control_plane.admin_kubeconfig),
                "--kube-namespace", ns, "--kube-identity", name, "--kube-lease-duration", "4",
                "--material-check-interval", "0.3s", "--ca-rotation", "new-key",
                "--ca-propagation-delay", f"{DELAY_S}s", "--max-workload-cert-ttl", f"{TTL_S}s",
                "--default-workload-cert-ttl", f"{TTL_S}s", "--admin-token-file", str(token),
                env={"KUBECONFIG": ""},
            )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("r-0", "r-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        for ca in started.values():
            ca.stop()
        raise errors[0]
    return started


def test_leader_hand_over_in_the_middle_of_a_rotation(
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    ns = make_namespace("slots")
    token = tmp_path / "admin-token"
    token.write_text("rotate-secret\n")
    token.chmod(0o600)
    replicas = _start_pair(control_plane, ns, tmp_path, token)
    try:
        _until("a leader stored the slots", lambda: _slots(admin_client, ns) is not None, 30)

        def holder() -> str:
            lease = admin_client.get(Lease, "bulwark-ca-leader", namespace=ns)
            return str(lease.spec.holderIdentity) if lease.spec else ""

        _until("a leader holds the lease", lambda: holder() in replicas, 30)
        leader = holder()
        (survivor,) = (n for n in replicas if n != leader)
        request = urllib.request.Request(
            f"{replicas[leader].admin_url}/v1/ca/rotation/prepare",
            method="POST",
            headers={"Authorization": "Bearer rotate-secret"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            prepared = json.loads(response.read())["prepared"]["id"]
        workload_ns = make_namespace("slotswl")
        _until(
            "the ConfigMap carries both roots",
            lambda: _cm_roots(admin_client, workload_ns) == 2,
            15,
        )
        _until(
            "the follower publishes both roots",
            lambda: len(load_certificates(replicas[survivor].root_cert_path.read_bytes())) == 2,
            10,
        )

        replicas[leader].stop()  # hand-over while the new root is prepared, not active
        _until("the survivor leads", lambda: holder() == survivor, 20)
        _until(
            "the survivor activates the prepared root",
            lambda: (_slots(admin_client, ns) or {}).get("active", {}).get("id") == prepared,
            DELAY_S + 20,
        )
        _until(
            "the survivor drops the old root",
            lambda: (_slots(admin_client, ns) or {}).get("retired", 1) is None,
            TTL_S + 20,
        )
        _until(
            "the ConfigMap carries the new root alone",
            lambda: _cm_roots(admin_client, workload_ns) == 1,
            15,
        )
        survivor_roots = load_certificates(replicas[survivor].root_cert_path.read_bytes())
        assert len(survivor_roots) == 1
        assert "operator" not in replicas[survivor].log(), "the survivor moved on by itself"
        assert "prepared CA activated" in replicas[survivor].log()
    finally:
        for ca in replicas.values():
            ca.stop()


def test_plugged_in_slots_secret_is_created_then_updated(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    """A plugged-in CA's slots go to their own Secret (no classic keys), shared by replicas."""
    from datetime import UTC, datetime

    from ca_server.authority.material import create_self_signed
    from ca_server.authority.slots.model import Authority, Slot, SlotState
    from ca_server.kube import SecretKeyStore
    from ca_server.process.slots import CACERTS_SLOTS_SECRET
    from certs.spiffe_id import TrustDomain

    ns = make_namespace("cslots")
    store = SecretKeyStore(admin_client, namespace=ns, name=CACERTS_SLOTS_SECRET, mirror=False)
    assert store.load_state() is None
    now = datetime.now(UTC)
    one = Authority.of(create_self_signed(TrustDomain("cluster.local"), now))
    two = Authority.of(create_self_signed(TrustDomain("cluster.local"), now))
    first = SlotState(active=Slot(authority=one, since=now))
    store.save_state(first)
    assert store.load_state() == first
    second = SlotState(
        active=Slot(authority=one, since=now), prepared=Slot(authority=two, since=now)
    )
    store.save_state(second)
    assert store.load_state() == second
    data = admin_client.get(Secret, CACERTS_SLOTS_SECRET, namespace=ns).data or {}
    assert all(k.startswith("bulwark-") for k in data), sorted(data)


def _post(url: str, token: str) -> tuple[int, dict[str, Any]]:
    import urllib.error

    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_rotation_verb_sent_to_a_follower_is_refused_naming_the_leader(
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """Issue 22.10: only the Lease holder moves the slots. A follower answers 409 naming the
    holder and leaves the Secret alone (its write would race the leader's); the CLI says so;
    the same verb on the leader works."""
    import subprocess
    import sys

    ns = make_namespace("follow")
    token = tmp_path / "admin-token"
    token.write_text("rotate-secret\n")
    token.chmod(0o600)
    replicas = _start_pair(control_plane, ns, tmp_path, token)
    try:
        _until("a leader stored the slots", lambda: _slots(admin_client, ns) is not None, 30)

        def holder() -> str:
            lease = admin_client.get(Lease, "bulwark-ca-leader", namespace=ns)
            return str(lease.spec.holderIdentity) if lease.spec else ""

        _until("a leader holds the lease", lambda: holder() in replicas, 30)
        leader = holder()
        (follower,) = (n for n in replicas if n != leader)
        _until(  # the follower has read the Lease since the leader took it
            "the follower knows the leader",
            lambda: (
                leader
                in _post(f"{replicas[follower].admin_url}/v1/ca/rotation/retire", "rotate-secret")[
                    1
                ].get("detail", "")
            ),
            15,
        )
        before = admin_client.get(Secret, "istio-ca-secret", namespace=ns).metadata
        for verb in ("prepare", "activate?force=1", "retire?force=1"):
            status, body = _post(
                f"{replicas[follower].admin_url}/v1/ca/rotation/{verb}", "rotate-secret"
            )
            assert status == 409, (verb, status, body)
            assert f"held by {leader}" in body["detail"] and follower in body["detail"], body
        after = admin_client.get(Secret, "istio-ca-secret", namespace=ns).metadata
        assert before is not None and after is not None
        assert after.resourceVersion == before.resourceVersion, "a follower wrote the Secret"
        assert (_slots(admin_client, ns) or {}).get("prepared") is None

        cli = subprocess.run(
            [str(Path(sys.executable).parent / "bulwark"), "ca", "rotate", "prepare",
             "--admin-url", replicas[follower].admin_url, "--token-file", str(token)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 1 and f"held by {leader}" in cli.stderr + cli.stdout, cli

        status, body = _post(
            f"{replicas[leader].admin_url}/v1/ca/rotation/prepare", "rotate-secret"
        )
        assert status == 200, body
        assert (_slots(admin_client, ns) or {}).get("prepared", {}).get("id") == body["prepared"][
            "id"
        ]
    finally:
        for ca in replicas.values():
            ca.stop()
