"""TokenReviewAuthenticator against a real kube-apiserver: real tokens from TokenRequest."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod, ServiceAccount

from ca_server.errors import AuthenticationError, UpstreamUnavailable
from ca_server.identity import RequestCredentials
from ca_server.kube import TokenReviewAuthenticator, make_client
from certs.spiffe_id import TrustDomain
from tests.k8s.conftest import create_service_account, request_token
from tests.support.kube_harness import ControlPlane, write_kubeconfig
from tests.support.ports import free_port

TD = TrustDomain("cluster.local")


def creds(token: str | None, cluster_id: str = "") -> RequestCredentials:
    return RequestCredentials(
        bearer_token=token, client_cert_pem=None, cluster_id=cluster_id, peer="ipv4:127.0.0.1:1"
    )


@pytest.fixture(scope="module")
def frontend(admin_client: Client) -> str:
    try:
        create_service_account(admin_client, "default", "frontend")
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    return "frontend"


@pytest.fixture
def authenticator(admin_client: Client) -> Iterator[TokenReviewAuthenticator]:
    yield TokenReviewAuthenticator(admin_client, trust_domain=TD)


def test_tokenrequest_token_is_frontend(
    admin_client: Client, frontend: str, authenticator: TokenReviewAuthenticator
) -> None:
    token = request_token(admin_client, "default", frontend, audiences=["istio-ca"])
    caller = authenticator.authenticate(creds(token))
    assert caller is not None
    assert str(caller.spiffe_id) == "spiffe://cluster.local/ns/default/sa/frontend"
    assert (caller.namespace, caller.service_account) == ("default", "frontend")
    assert caller.authenticator == "tokenreview"
    assert caller.subject == "system:serviceaccount:default:frontend"
    assert caller.expires_at is not None and caller.expires_at > time.time() + 3000


def test_no_token_is_not_this_authenticators_business(
    authenticator: TokenReviewAuthenticator,
) -> None:
    assert authenticator.authenticate(creds(None)) is None


def test_other_audience_is_rejected(
    admin_client: Client, frontend: str, authenticator: TokenReviewAuthenticator
) -> None:
    token = request_token(admin_client, "default", frontend, audiences=["not-istio"])
    with pytest.raises(AuthenticationError):
        authenticator.authenticate(creds(token))


def test_configured_audiences_are_used(admin_client: Client, frontend: str) -> None:
    token = request_token(admin_client, "default", frontend, audiences=["mesh-ca"])
    custom = TokenReviewAuthenticator(admin_client, trust_domain=TD, audiences=["mesh-ca"])
    caller = custom.authenticate(creds(token))
    assert caller is not None and caller.service_account == "frontend"
    with pytest.raises(AuthenticationError):
        TokenReviewAuthenticator(admin_client, trust_domain=TD).authenticate(creds(token))


def test_token_of_deleted_service_account_is_rejected(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    """The API server looks service accounts up in its informer cache, so a deletion takes
    effect after that cache's lag (CI once saw the token still accepted right after the
    delete). Each try uses a fresh authenticator: the positive cache is tested elsewhere."""
    ns = make_namespace("gone")
    create_service_account(admin_client, ns, "doomed")
    token = request_token(admin_client, ns, "doomed", audiences=["istio-ca"])
    admin_client.delete(ServiceAccount, "doomed", namespace=ns)
    deadline = time.monotonic() + 10
    while True:
        fresh = TokenReviewAuthenticator(admin_client, trust_domain=TD)
        try:
            fresh.authenticate(creds(token))
        except AuthenticationError:
            return
        assert time.monotonic() < deadline, "token of a deleted service account still accepted"
        time.sleep(0.1)


def test_token_signed_by_another_key_is_rejected(
    admin_client: Client, frontend: str, authenticator: TokenReviewAuthenticator
) -> None:
    real = request_token(admin_client, "default", frontend, audiences=["istio-ca"])
    header_b64 = real.split(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "=="))
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": header.get("kid")})
    with pytest.raises(AuthenticationError):
        authenticator.authenticate(creds(forged))


def test_pod_bound_token_carries_pod_name_and_uid(
    admin_client: Client,
    make_namespace: Callable[[str], str],
    authenticator: TokenReviewAuthenticator,
) -> None:
    ns = make_namespace("pod")
    create_service_account(admin_client, ns, "web")
    pod = admin_client.create(
        Pod(
            metadata=ObjectMeta(name="web-0", namespace=ns),
            spec=PodSpec(
                serviceAccountName="web",
                containers=[Container(name="app", image="example.invalid/app")],
            ),
        )
    )
    assert pod.metadata is not None and pod.metadata.uid
    token = request_token(
        admin_client, ns, "web", audiences=["istio-ca"], pod=("web-0", pod.metadata.uid)
    )
    caller = authenticator.authenticate(creds(token, cluster_id="Kubernetes"))
    assert caller is not None
    assert (caller.pod_name, caller.pod_uid) == ("web-0", pod.metadata.uid)
    assert caller.cluster_id == "Kubernetes"
    admin_client.delete(Pod, "web-0", namespace=ns, grace_period=0)


def test_unknown_cluster_is_rejected(
    admin_client: Client, frontend: str, authenticator: TokenReviewAuthenticator
) -> None:
    token = request_token(admin_client, "default", frontend, audiences=["istio-ca"])
    with pytest.raises(AuthenticationError):
        authenticator.authenticate(creds(token, cluster_id="elsewhere"))


def test_accepted_token_is_cached_until_it_expires(
    admin_client: Client, make_namespace: Callable[[str], str]
) -> None:
    ns = make_namespace("cache")
    create_service_account(admin_client, ns, "svc")
    token = request_token(admin_client, ns, "svc", audiences=["istio-ca"], seconds=600)
    now = [time.time()]
    auth = TokenReviewAuthenticator(admin_client, trust_domain=TD, clock=lambda: now[0])
    assert auth.authenticate(creds(token)) is not None
    assert auth.cache_size() == 1
    # Cached: answered without the API server, which would now refuse the deleted account.
    admin_client.delete(ServiceAccount, "svc", namespace=ns)
    assert auth.authenticate(creds(token)) is not None
    now[0] += 601  # past the token's exp: the cache no longer vouches for it, so we ask again.
    # kube-apiserver itself caches successful token authentications for 10 s; poll past that.
    deadline = time.monotonic() + 20
    while True:
        try:
            auth.authenticate(creds(token))
        except AuthenticationError:
            break
        assert time.monotonic() < deadline, "the API server kept accepting a deleted account"
        time.sleep(0.5)


def test_cache_is_bounded(admin_client: Client, frontend: str) -> None:
    auth = TokenReviewAuthenticator(admin_client, trust_domain=TD, max_cache_entries=2)
    for _ in range(3):
        token = request_token(admin_client, "default", frontend, audiences=["istio-ca"])
        assert auth.authenticate(creds(token)) is not None
    assert auth.cache_size() == 2


def test_api_server_unreachable_is_unavailable(
    control_plane: ControlPlane, tmp_path: object, admin_client: Client, frontend: str
) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "dead.kubeconfig"
    write_kubeconfig(
        path,
        server=f"https://127.0.0.1:{free_port()}",
        ca_file=control_plane.ca_file,
        client_cert=control_plane.admin_cert,
        client_key=control_plane.admin_key,
    )
    dead = make_client(KubeConfig.from_file(path), timeout_seconds=2)
    token = request_token(admin_client, "default", frontend, audiences=["istio-ca"])
    with pytest.raises(UpstreamUnavailable):
        TokenReviewAuthenticator(dead, trust_domain=TD).authenticate(creds(token))


def test_reviewer_without_rbac_is_unavailable_not_unauthenticated(
    control_plane: ControlPlane,
    tmp_path: object,
    admin_client: Client,
    make_namespace: Callable[[str], str],
) -> None:
    """A CA whose ServiceAccount may not create TokenReviews is misconfigured: callers should
    retry (UNAVAILABLE), not be told their valid token is bad."""
    from pathlib import Path

    ns = make_namespace("norbac")
    create_service_account(admin_client, ns, "ca")
    ca_token = request_token(
        admin_client, ns, "ca", audiences=["https://kubernetes.default.svc.cluster.local"]
    )
    path = control_plane.write_token_kubeconfig(
        Path(str(tmp_path)) / "ca.kubeconfig", ca_token, namespace=ns
    )
    weak = make_client(KubeConfig.from_file(path))
    token = request_token(admin_client, ns, "ca", audiences=["istio-ca"])
    with pytest.raises(UpstreamUnavailable):
        TokenReviewAuthenticator(weak, trust_domain=TD).authenticate(creds(token))
