"""Token refusals for time say by how much, by this CA's clock, and name the clocks when the
gap is large (issue 22 item 8): the JWT authenticator (any issuer, the embedded one too) and
what TokenReview's rejections add."""

from __future__ import annotations

import time

import pytest

from ca_server.kube.tokenreview import _time_hint
from certs.keys import generate_key
from tests.support.broken import csr_pem, sa_claims
from tests.support.policy_cases import ME
from tests.support.testca import Aborted, TestCa


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(tmp_path_factory.mktemp("skew"))


def refusal(ca: TestCa, claims: dict[str, int]) -> str:
    token = ca.forge.sign({**sa_claims(), **claims})
    with pytest.raises(Aborted) as refused:
        ca.issue(csr_pem(generate_key(), uris=(ME,)), token=token)
    return refused.value.details


@pytest.mark.parametrize(
    ("claims", "said", "clock_named"),
    [
        (
            {"exp": -(2 * 3600 + 3 * 60), "iat": -4 * 3600},
            "token has expired: 2h3m ago by this CA's clock",
            True,
        ),
        ({"exp": -150, "iat": -3600}, "token has expired: 2m", False),  # a stale token, likely
        (
            {"nbf": 7 * 60 + 2, "iat": 0, "exp": 3600},
            "token is not valid yet: for another 7m",
            True,
        ),
        ({"iat": 3 * 3600 + 5, "exp": 4 * 3600}, "token is not valid yet: for another 3h", True),
    ],
)
def test_time_refusals_give_the_gap_and_name_the_clock_when_large(
    ca: TestCa, claims: dict[str, int], said: str, clock_named: bool
) -> None:
    now = int(time.time())
    details = refusal(ca, {name: now + offset for name, offset in claims.items()})
    assert said in details, details
    assert ("check NTP" in details) is clock_named, details


def test_tokenreview_rejections_for_time_are_measured_on_this_ca_clock(ca: TestCa) -> None:
    now = float(int(time.time()))
    expired = ca.forge.sign(sa_claims(exp=int(now) - 7380, iat=int(now) - 9000))
    hint = _time_hint("[invalid bearer token, service account token has expired]", expired, now)
    assert "2h3m ago by this CA's clock" in hint and "NTP" in hint
    # the API server says expired, our clock says it is fine: one of them is wrong
    fresh = ca.forge.sign(sa_claims(exp=int(now) + 3600))
    hint = _time_hint("token has expired", fresh, now)
    assert "valid for another 1h" in hint and "NTP" in hint
    early = ca.forge.sign(sa_claims(nbf=int(now) + 600, iat=int(now) + 600))
    hint = _time_hint("validation failed, token not valid yet (nbf)", early, now)
    assert "for another 10m" in hint and "NTP" in hint
    assert _time_hint("token audience mismatch", fresh, now) == ""
    assert _time_hint("token has expired", "not-a-jwt", now) == ""
