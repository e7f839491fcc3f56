"""Fuzzing SPIFFE ID parsing and Kubernetes identity building: only InvalidSpiffeId escapes,
and every accepted ID formats back to the text it was parsed from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from certs.errors import InvalidSpiffeId
from certs.spiffe_id import SpiffeId, TrustDomain, is_namespace, is_service_account

LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
NAMESPACE = LABEL
ACCOUNT = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
SEGMENT = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
TD = st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True)
NEAR_MISS = st.text(alphabet="spife:/.-_aA0\n\r\t %?#@~\x00é", max_size=60)


@given(st.one_of(st.text(max_size=300), NEAR_MISS, NEAR_MISS.map(lambda t: "spiffe://" + t)))
def test_parse_raises_only_its_own_error(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text
    assert "\n" not in text and "\r" not in text


@given(TD, st.lists(SEGMENT, min_size=1, max_size=8))
def test_valid_ids_round_trip(td: str, segments: list[str]) -> None:
    text = f"spiffe://{td}/" + "/".join(segments)
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid


@given(NAMESPACE, ACCOUNT)
def test_service_account_identity_round_trips(namespace: str, account: str) -> None:
    sid = SpiffeId.for_service_account(TrustDomain("cluster.local"), namespace, account)
    assert sid.service_account() == (namespace, account)
    assert SpiffeId.parse(str(sid)).service_account() == (namespace, account)


@given(st.text(max_size=80), st.text(max_size=80))
def test_for_service_account_raises_only_its_own_error(namespace: str, account: str) -> None:
    try:
        sid = SpiffeId.for_service_account(TrustDomain("cluster.local"), namespace, account)
    except InvalidSpiffeId:
        assert not (is_namespace(namespace) and is_service_account(account))
        return
    assert is_namespace(namespace) and is_service_account(account)
    assert sid.service_account() == (namespace, account)
