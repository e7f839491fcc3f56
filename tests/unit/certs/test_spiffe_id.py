"""SPIFFE ID and trust domain rules of docs/COMPATIBILITY.md §3."""

from __future__ import annotations

import pytest

from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain

GOOD = [
    "spiffe://cluster.local/ns/demo/sa/frontend",
    "spiffe://example.org/a/b.c/d-e/f_g",
    "spiffe://td_1.example-2/x",
]
BAD = {
    "http://cluster.local/ns/a/sa/b": "must start with 'spiffe://'",
    "spiffe://cluster.local": "no path",
    "spiffe://Cluster.local/x": "lowercase",
    "spiffe://cluster.local/ns//sa": "empty segment",
    "spiffe://cluster.local/ns/a/": "trailing",
    "spiffe://cluster.local/ns/./a": "'.' segment",
    "spiffe://cluster.local/ns/../a": "'..' segment",
    "spiffe://cluster.local/ns/a%20b": "percent-encoding",
    "spiffe://cluster.local/ns?x=1": "query",
    "spiffe://cluster.local/ns#frag": "fragment",
    "spiffe://user@cluster.local/ns": "userinfo",
    "spiffe://cluster.local:8080/ns": "port",
    "spiffe://cluster.local/ns/a b": "may only contain",
    "spiffe:///ns/a": "empty",
    "spiffe://" + "a" * 256 + "/x": "255 bytes",
    "spiffe://td/" + "a" * 2100: "2048 bytes",
}


@pytest.mark.parametrize("text", GOOD)
def test_valid_ids_round_trip(text: str) -> None:
    assert str(SpiffeId.parse(text)) == text


@pytest.mark.parametrize(("text", "says"), BAD.items())
def test_invalid_ids_are_rejected_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=None) as err:
        SpiffeId.parse(text)
    assert says in str(err.value)


def test_value_semantics() -> None:
    a = SpiffeId.for_service_account(TrustDomain("cluster.local"), "demo", "fe")
    assert a == SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/fe")
    assert hash(a) == hash(SpiffeId.parse(str(a)))
    assert a.service_account() == ("demo", "fe")
    assert SpiffeId.parse("spiffe://cluster.local/x").service_account() is None
    with pytest.raises(AttributeError):
        a.path = "/other"  # type: ignore[misc]


# Defect (505d662): `^...$` with `.match` let a trailing newline through, and `/` inside a
# Kubernetes name produced `.../sa/a/sa/b`; names are now full-matched Kubernetes names.
BAD_NAMES = [
    ("frontend\n", "service account"),
    ("a/sa/b", "service account"),
    ("Frontend", "service account"),
    ("a..b", "service account"),
    ("-a", "service account"),
    ("a" * 254, "service account"),
    ("", "service account"),
]
BAD_NAMESPACES = ["demo\n", "de\nmo", "Demo", "a.b", "-a", "a-", "n" * 64, "", "a/b", "a:b"]


@pytest.mark.parametrize(("account", "says"), BAD_NAMES)
def test_service_account_names_are_full_matched(account: str, says: str) -> None:
    with pytest.raises(InvalidSpiffeId) as err:
        SpiffeId.for_service_account(TrustDomain("cluster.local"), "demo", account)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("namespace", BAD_NAMESPACES)
def test_namespaces_are_dns1123_labels(namespace: str) -> None:
    with pytest.raises(InvalidSpiffeId, match="namespace"):
        SpiffeId.for_service_account(TrustDomain("cluster.local"), namespace, "sa")


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://cluster.local/ns/demo/sa/frontend\n",
        "spiffe://cluster.local\n/ns/demo/sa/frontend",
        "spiffe://cluster.local/ns/demo\n/sa/frontend",
    ],
)
def test_a_newline_anywhere_is_refused(text: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(text)


def test_valid_kubernetes_names_and_the_shape_check() -> None:
    td = TrustDomain("cluster.local")
    sid = SpiffeId.for_service_account(td, "n" * 63, "a.b-c." + "x" * 200)
    assert sid.service_account() == ("n" * 63, "a.b-c." + "x" * 200)
    # a valid SPIFFE ID whose ns/sa parts are not Kubernetes names is not a workload identity
    assert SpiffeId.parse("spiffe://cluster.local/ns/Demo/sa/x").service_account() is None
    assert SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/a_b").service_account() is None


def test_long_segments_are_not_echoed_whole() -> None:
    with pytest.raises(InvalidSpiffeId) as err:
        SpiffeId.parse("spiffe://td/" + "a" * 1000 + " b")
    assert len(str(err.value)) < 200
