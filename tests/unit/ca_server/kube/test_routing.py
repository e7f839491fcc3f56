"""Requests routed by cluster (`ClusterRoutedTokenReview`): which API server reviews a token,
and what a caller is told when none can. Each cluster's API server is a small stand-in that
knows only its own tokens (the real two-cluster runs are in tests/k8s/test_multicluster.py);
the authenticators in front of them are the CA's own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import httpx2
import jwt
import pytest
from lightkube.models.authentication_v1 import TokenReviewStatus, UserInfo
from lightkube.resources.authentication_v1 import TokenReview

from ca_server.errors import CaError
from ca_server.identity import RequestCredentials, cluster_id_of
from ca_server.kube.remote_secrets import RemoteCluster
from ca_server.kube.routing import ClusterBackend, ClusterRoutedTokenReview
from ca_server.kube.settings import parse_cluster_aliases
from ca_server.kube.tokenreview import TokenReviewAuthenticator
from ca_server.metrics import CaMetrics
from certs.spiffe_id import TrustDomain

TD = TrustDomain("cluster.local")
U, UNAVAILABLE = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE


@dataclass
class ApiServer:
    """One cluster's API server as TokenReview sees it: it vouches for its own tokens only."""

    cluster: str
    up: bool = True
    reviews: int = 0
    closed: bool = False
    in_flight: list[str] = field(default_factory=list)

    def create(self, review: TokenReview) -> TokenReview:
        if not self.up:
            raise httpx2.ConnectError("connection refused")
        self.reviews += 1
        assert review.spec is not None and review.spec.token is not None
        claims = jwt.decode(review.spec.token, options={"verify_signature": False})
        cluster, ns, sa = claims["sub"].split(":")
        if cluster != self.cluster:
            failed = TokenReviewStatus(authenticated=False, error="invalid token")
            return TokenReview(spec=review.spec, status=failed)
        user = UserInfo(
            username=f"system:serviceaccount:{ns}:{sa}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
        )
        return TokenReview(
            spec=review.spec, status=TokenReviewStatus(authenticated=True, user=user)
        )

    def close(self) -> None:
        self.closed = True


def token(cluster: str, ns: str = "shop", sa: str = "web") -> str:
    claims = {"sub": f"{cluster}:{ns}:{sa}", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, "stand-in API servers read it unverified", algorithm="HS256")


def creds(tok: str, cluster_id: str = "") -> RequestCredentials:
    return RequestCredentials(
        bearer_token=tok, client_cert_pem=None, cluster_id=cluster_id, peer="p"
    )


def authenticator(api: ApiServer) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(api, trust_domain=TD, cluster_id=api.cluster)  # type: ignore[arg-type]


@pytest.fixture
def apis() -> dict[str, ApiServer]:
    return {name: ApiServer(name) for name in ("east", "west")}


@pytest.fixture
def router(apis: dict[str, ApiServer]) -> Iterator[ClusterRoutedTokenReview]:
    def build(cluster: RemoteCluster) -> ClusterBackend:
        api = apis[cluster.cluster_id]
        return ClusterBackend(cluster.cluster_id, authenticator(api), close=api.close)

    aliases = {"east-old": "east", "west-old": "west", "east": "west"}
    routed = ClusterRoutedTokenReview(authenticator(apis["east"]), "east", build, aliases)
    routed.cluster_set(remote("west"))
    yield routed


def remote(cluster_id: str, error: str = "") -> RemoteCluster:
    from lightkube import KubeConfig

    config = None if error else KubeConfig.from_server("https://127.0.0.1:1")
    return RemoteCluster(
        cluster_id=cluster_id, secret=f"istio-system/s-{cluster_id}", digest=cluster_id,
        config=config, error=error,
    )  # fmt: skip


def refusal(router: ClusterRoutedTokenReview, request: RequestCredentials) -> CaError:
    with pytest.raises(CaError) as info:
        router.authenticate(request)
    return info.value


# (token's cluster, clusterid sent, the caller's cluster, or (code, the message says))
ROUTES: list[tuple[str, str, str | tuple[grpc.StatusCode, str]]] = [
    ("east", "", "east"),
    ("east", "east", "east"),
    ("west", "west", "west"),
    ("west", "east", (U, "TokenReview of cluster 'east'")),
    ("west", "", (U, "TokenReview of cluster 'east'")),
    ("east", "west", (U, "TokenReview of cluster 'west'")),
    ("east", "north", (U, "unknown cluster 'north'")),
    ("east", "east-old", "east"),  # aliases (--cluster-aliases, istiod's --clusterAliases)
    ("west", "west-old", "west"),
    ("west", "east-old", (U, "TokenReview of cluster 'east'")),
]


@pytest.mark.parametrize(("issuer", "sent", "outcome"), ROUTES)
def test_clusterid_picks_the_api_server(
    router: ClusterRoutedTokenReview,
    issuer: str,
    sent: str,
    outcome: str | tuple[grpc.StatusCode, str],
) -> None:
    request = creds(token(issuer), sent)
    if isinstance(outcome, str):
        caller = router.authenticate(request)
        assert caller is not None and caller.cluster_id == outcome
        assert str(caller.spiffe_id) == "spiffe://cluster.local/ns/shop/sa/web"
    else:
        code, says = outcome
        refused = refusal(router, request)
        assert refused.code == code and says in refused.public_message


def test_a_remote_api_server_down_is_unavailable_for_its_callers_only(
    router: ClusterRoutedTokenReview, apis: dict[str, ApiServer]
) -> None:
    apis["west"].up = False
    refused = refusal(router, creds(token("west"), "west"))
    assert refused.code == UNAVAILABLE and "cluster 'west'" in refused.public_message
    assert router.authenticate(creds(token("east"))) is not None


def test_a_broken_remote_secret_is_unavailable_not_unknown(
    router: ClusterRoutedTokenReview,
) -> None:
    router.cluster_set(remote("south", error="kubeconfig is not YAML"))
    refused = refusal(router, creds(token("south"), "south"))
    assert refused.code == UNAVAILABLE
    assert "cluster 'south' is unavailable" in refused.public_message
    assert "kubeconfig is not YAML" in refused.public_message
    assert not router.may_block(creds(token("south"), "south"))


def test_removed_cluster_is_unknown_even_for_a_token_it_reviewed_before(
    router: ClusterRoutedTokenReview, apis: dict[str, ApiServer]
) -> None:
    known = creds(token("west"), "west")
    assert router.authenticate(known) is not None
    assert not router.may_block(known)  # cached by west's authenticator
    router.cluster_removed("west")
    assert apis["west"].closed
    assert "unknown cluster 'west'" in refusal(router, known).public_message
    assert router.known_clusters() == {"east", "east-old", "west-old"}


def test_the_own_cluster_cannot_be_removed(router: ClusterRoutedTokenReview) -> None:
    router.cluster_removed("east")
    assert router.authenticate(creds(token("east"))) is not None


def test_a_replaced_cluster_closes_its_old_client_after_the_last_request(
    router: ClusterRoutedTokenReview, apis: dict[str, ApiServer]
) -> None:
    old_api = apis["west"]
    with router._using("west"):
        apis["west"] = ApiServer("west")
        router.cluster_set(remote("west"))  # a changed Secret: a new backend, new client
        assert not old_api.closed, "closed under a request still using it"
    assert old_api.closed
    assert router.authenticate(creds(token("west"), "west")) is not None
    assert apis["west"].reviews == 1


def test_impersonation_is_checked_in_the_callers_cluster(
    router: ClusterRoutedTokenReview,
) -> None:
    caller = router.authenticate(creds(token("west"), "west"))
    assert caller is not None
    with pytest.raises(CaError) as info:  # no node authorizer here: refused, in west
        router.authorize_impersonation(caller, "shop", "db")
    assert info.value.code == U


@pytest.mark.parametrize(
    ("sent", "label"),
    [
        ("", "east"),
        ("east", "east"),
        ("west", "west"),
        ("north", "unknown"),
        ("x" * 500, "unknown"),
    ],
    ids=["none", "own", "remote", "unknown", "long"],
)
def test_metrics_label_only_known_clusters(
    router: ClusterRoutedTokenReview, sent: str, label: str
) -> None:
    metrics = CaMetrics(own_cluster="east")
    metrics.label_clusters(router.known_clusters)
    metrics.refused(reason="authentication", code="UNAUTHENTICATED", cluster_id=sent)
    metrics.issued_for(sent)
    labels = {"reason": "authentication", "code": "UNAUTHENTICATED", "cluster": label}
    assert metrics.registry.get_sample_value("bulwark_ca_refusals_total", labels) == 1
    assert metrics.registry.get_sample_value("bulwark_ca_issued_total", {"cluster": label}) == 1


def test_a_clusters_own_id_wins_over_an_alias_of_that_name(
    router: ClusterRoutedTokenReview,
) -> None:
    caller = router.authenticate(creds(token("east"), "east"))  # "east" is also an alias
    assert caller is not None and caller.cluster_id == "east"


@pytest.mark.parametrize(
    ("metadata", "cluster"),
    [
        ([], ""),
        ([("clusterid", "west")], "west"),
        ([("clusterid", "west"), ("clusterid", "east")], ""),
        ([("ClusterID-other", "west")], ""),
    ],
    ids=["none", "one", "repeated", "other-header"],
)
def test_the_clusterid_header_is_read_as_istiod_reads_it(
    metadata: list[tuple[str, str]], cluster: str
) -> None:
    assert cluster_id_of(metadata) == cluster


@pytest.mark.parametrize(
    ("text", "pairs"),
    [("", ()), ("a=b", (("a", "b"),)), (" a = b , c=d ", (("a", "b"), ("c", "d")))],
)
def test_cluster_aliases_parse(text: str, pairs: tuple[tuple[str, str], ...]) -> None:
    assert parse_cluster_aliases(text) == pairs


@pytest.mark.parametrize("text", ["a", "a=", "=b", "a=a", "a=b,a=c"])
def test_bad_cluster_aliases_name_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--cluster-aliases"):
        parse_cluster_aliases(text)
