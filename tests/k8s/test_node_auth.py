"""Node-bound impersonation against a real kube-apiserver (issue #12, Istio's node_auth.go).

Defect (505d662): a trusted node account could impersonate any service account anywhere.
Now the target must have a pod on the node the caller's (pod-bound) token belongs to. Pods
carry `spec.nodeName` directly: no scheduler or kubelet is needed to place them, and their
status is set through the status subresource. Since issue 23 the decision reads a
watch-backed pod cache (ca_server/kube/pod_cache.py), so a pod deleted, moved or finished
changes it once the watch has delivered the event; test_pod_cache.py covers the cache's
readiness and resync.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from ca_server.authn.authenticators import Authentication
from ca_server.errors import ImpersonationRefused
from ca_server.identity import Caller, RequestCredentials
from ca_server.kube import TokenReviewAuthenticator
from ca_server.kube.node_auth import KubeNodeAuthorizer
from ca_server.kube.pod_cache import PodCache
from certs.spiffe_id import TrustDomain
from tests.k8s.conftest import create_service_account, request_token
from tests.support.kube_harness import ControlPlane

TD = TrustDomain("cluster.local")
WAIT_S = 30.0  # how long the cache may take to follow the API server (never a measurement)


def creds(token: str) -> RequestCredentials:
    return RequestCredentials(bearer_token=token, client_cert_pem=None, cluster_id="", peer="p")


def make_pod(
    client: Client, namespace: str, account: str, node: str, *, name: str = ""
) -> tuple[str, str]:
    name = name or f"{account}-{uuid.uuid4().hex[:6]}"
    pod = Pod(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=PodSpec(
            serviceAccountName=account,
            nodeName=node,
            containers=[Container(name="c", image="registry.invalid/none:1")],
        ),
    )
    created = client.create(pod)
    assert created.metadata is not None and created.metadata.uid
    return name, created.metadata.uid


def set_phase(client: Client, namespace: str, name: str, phase: str) -> None:
    """What the kubelet would report, through the status subresource (there is no kubelet)."""
    client.patch(Pod.Status, name, {"status": {"phase": phase}}, namespace=namespace)


@pytest.fixture(scope="module")
def cluster(admin_client: Client) -> Iterator[dict[str, str]]:
    """ztunnel on node-a; backend on node-a (namespace app); lonely on node-b only."""
    suffix = uuid.uuid4().hex[:6]
    from lightkube.resources.core_v1 import Namespace

    names = {"system": f"sys-{suffix}", "app": f"app-{suffix}"}
    for ns in names.values():
        admin_client.create(Namespace(metadata=ObjectMeta(name=ns)))
    for ns, account in (
        (names["system"], "ztunnel"),
        (names["app"], "backend"),
        (names["app"], "lonely"),
    ):
        try:
            create_service_account(admin_client, ns, account)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    ztunnel = make_pod(admin_client, names["system"], "ztunnel", "node-a")
    make_pod(admin_client, names["app"], "backend", "node-a")
    make_pod(admin_client, names["app"], "lonely", "node-b")
    token = request_token(
        admin_client, names["system"], "ztunnel", audiences=["istio-ca"], pod=ztunnel
    )
    unbound = request_token(admin_client, names["system"], "ztunnel", audiences=["istio-ca"])
    yield {**names, "token": token, "unbound": unbound, "pod": ztunnel[0], "uid": ztunnel[1]}


@pytest.fixture(scope="module")
def pods(control_plane: ControlPlane) -> Iterator[PodCache]:
    """The watch-backed pod cache a CA worker runs, on the admin's credentials."""
    cache = PodCache(lambda: admin_of(control_plane)).start()
    assert cache.wait_synced(60), "the pod cache never listed the cluster's pods"
    yield cache
    cache.stop()


@pytest.fixture
def authn(admin_client: Client, pods: PodCache) -> Authentication:
    node = KubeNodeAuthorizer(pods)
    return Authentication(
        [TokenReviewAuthenticator(admin_client, trust_domain=TD, node_authorizer=node)]
    )


def admin_of(control_plane: ControlPlane) -> Client:
    return Client(config=KubeConfig.from_file(control_plane.admin_kubeconfig), trust_env=False)


def caller_of(authn: Authentication, token: str) -> Caller:
    return authn.authenticate(creds(token))


def eventually(authorize: Callable[[], None], refused: bool, what: str) -> None:
    """Wait until the decision is the expected one (the cache follows a watch)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            authorize()
            outcome = False
        except ImpersonationRefused:
            outcome = True
        if outcome == refused:
            return
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_target_with_a_pod_on_the_callers_node_is_allowed(
    authn: Authentication, cluster: dict[str, str]
) -> None:
    caller = caller_of(authn, cluster["token"])
    assert caller.pod_name == cluster["pod"] and caller.pod_uid == cluster["uid"]
    assert caller.node_name == "node-a", "kube-apiserver >= 1.32 names the bound pod's node"
    eventually(
        lambda: authn.authorize_impersonation(caller, cluster["app"], "backend"),
        refused=False,
        what="the cache sees backend's pod on node-a",
    )


def test_target_only_on_another_node_is_refused(
    authn: Authentication, cluster: dict[str, str]
) -> None:
    caller = caller_of(authn, cluster["token"])
    with pytest.raises(ImpersonationRefused, match="no pod on the caller's node 'node-a'"):
        authn.authorize_impersonation(caller, cluster["app"], "lonely")


def test_target_with_no_pod_at_all_is_refused(
    authn: Authentication, cluster: dict[str, str]
) -> None:
    caller = caller_of(authn, cluster["token"])
    with pytest.raises(ImpersonationRefused, match="no pod"):
        authn.authorize_impersonation(caller, "kube-system", "admin")


def test_a_pod_deleted_moved_or_finished_takes_the_right_with_it(
    admin_client: Client, authn: Authentication, cluster: dict[str, str]
) -> None:
    """Issue 23: the decision follows the pod watch, not a LIST per request."""
    caller = caller_of(authn, cluster["token"])
    app = cluster["app"]
    for account in ("gone", "mover", "done", "failed"):
        create_service_account(admin_client, app, account)

    def allowed(account: str) -> Callable[[], None]:
        return lambda: authn.authorize_impersonation(caller, app, account)

    gone, _ = make_pod(admin_client, app, "gone", "node-a")
    mover, _ = make_pod(admin_client, app, "mover", "node-a")
    done, _ = make_pod(admin_client, app, "done", "node-a")
    failed, _ = make_pod(admin_client, app, "failed", "node-a")
    set_phase(admin_client, app, done, "Running")
    for account in ("gone", "mover", "done", "failed"):
        eventually(allowed(account), refused=False, what=f"{account}'s pod is seen on node-a")

    admin_client.delete(Pod, gone, namespace=app, grace_period=0)
    eventually(allowed("gone"), refused=True, what="a deleted pod takes the right with it")

    # spec.nodeName is immutable: a pod "moves" by being replaced on another node
    admin_client.delete(Pod, mover, namespace=app, grace_period=0)
    make_pod(admin_client, app, "mover", "node-b", name=mover)
    eventually(allowed("mover"), refused=True, what="a pod moved to node-b leaves node-a")

    set_phase(admin_client, app, done, "Succeeded")
    eventually(allowed("done"), refused=True, what="a Succeeded pod holds no identity")
    set_phase(admin_client, app, failed, "Failed")
    eventually(allowed("failed"), refused=True, what="a Failed pod holds no identity")
    allowed("backend")()  # the others on node-a are untouched


def test_a_token_not_bound_to_a_pod_may_not_impersonate(
    authn: Authentication, cluster: dict[str, str]
) -> None:
    caller = caller_of(authn, cluster["unbound"])
    with pytest.raises(ImpersonationRefused, match="not bound to a pod"):
        authn.authorize_impersonation(caller, cluster["app"], "backend")


def test_node_comes_from_the_bound_pod_when_the_api_server_gives_no_node_name(
    pods: PodCache, authn: Authentication, cluster: dict[str, str]
) -> None:
    """Older API servers send no `authentication.kubernetes.io/node-name`: the pod cache
    knows the bound pod's node."""
    from dataclasses import replace

    caller = replace(caller_of(authn, cluster["token"]), node_name="")
    authorizer = KubeNodeAuthorizer(pods)
    assert authorizer.node_of(caller) == "node-a"
    authorizer.authorize(caller, cluster["app"], "backend")
    forged = replace(caller, pod_uid=str(uuid.uuid4()))
    with pytest.raises(ImpersonationRefused, match="uid differs"):
        authorizer.node_of(forged)
    gone = replace(caller, pod_name="no-such-pod")
    with pytest.raises(ImpersonationRefused, match="no longer exists"):
        authorizer.node_of(gone)


def test_a_reviewed_token_is_cached_at_most_five_minutes(
    admin_client: Client, cluster: dict[str, str]
) -> None:
    """Defect (505d662): TokenReview answers were cached until the token's `exp` (a year for
    extended tokens), so a deleted pod's or account's token kept working from the cache."""
    now = [time.time()]
    auth = TokenReviewAuthenticator(admin_client, trust_domain=TD, clock=lambda: now[0])
    assert auth.authenticate(creds(cluster["token"])) is not None
    assert not auth.may_block(creds(cluster["token"]))  # answered from the cache
    now[0] += 301
    assert auth.may_block(creds(cluster["token"])), "the cache outlived its 300 s bound"


def test_a_ca_process_with_the_deployed_rbac_enforces_the_node(
    admin_client: Client,
    ca_kubeconfig: object,
    cluster: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """End to end: `python -m ca_server --kubeconfig` as istio-system/bulwark-ca with the RBAC of
    deploy/base (which must let it watch pods), ztunnel's pod-bound token, ImpersonatedIdentity
    and a BatchCreateCertificates call."""
    import grpc

    from certs.csr import build_csr
    from certs.keys import generate_key
    from certs.pem import load_certificates
    from certs.spiffe_id import SpiffeId
    from certs.verify import spiffe_id_of
    from tests.k8s.conftest import CA_NAMESPACE
    from tests.support.ca_client import batch_create, channel, create_certificate
    from tests.support.ca_process import start_ca

    ca = start_ca(
        tmp_path_factory.mktemp("node-auth") / "ca",
        "--kubeconfig", str(ca_kubeconfig), "--kube-namespace", CA_NAMESPACE,
        "--trusted-node-accounts", f"{cluster['system']}/ztunnel",
        env={"KUBECONFIG": ""},
    )  # fmt: skip
    try:

        def impersonate(target: SpiffeId) -> list[str]:
            # A worker's pod cache syncs after the worker serves: UNAVAILABLE until then.
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    with channel(ca.grpc_addr, ca.root_cert_path) as chan:
                        return create_certificate(
                            chan,
                            build_csr(generate_key(), target),
                            token=cluster["token"],
                            metadata_fields={"ImpersonatedIdentity": str(target)},
                        )
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

        backend = SpiffeId.for_service_account(TD, cluster["app"], "backend")
        chain = impersonate(backend)
        assert spiffe_id_of(load_certificates(chain[0])[0]) == backend
        with pytest.raises(grpc.RpcError) as err:
            impersonate(SpiffeId.for_service_account(TD, cluster["app"], "lonely"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no pod on the caller's node" in (err.value.details() or "")
        lonely = SpiffeId.for_service_account(TD, cluster["app"], "lonely")
        with channel(ca.grpc_addr, ca.root_cert_path) as chan:
            results = batch_create(
                chan,
                [(build_csr(generate_key(), t), str(t), 3600) for t in (backend, lonely)],
                token=cluster["token"],
            )
        assert [r.status.code for r in results] == [0, grpc.StatusCode.UNAUTHENTICATED.value[0]]
        assert results[0].spiffe_id == str(backend)
    finally:
        ca.stop()
    assert "Traceback" not in ca.log()
