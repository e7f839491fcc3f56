"""SPIFFE ID and trust domain rules of SPEC §3."""

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
