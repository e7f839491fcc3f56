"""The JWT rules the CA and the agent share, in-process: NumericDate claims, `crit`, and the one
limit on JWT-SVID audiences."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from certs.errors import InvalidAudience, JwtError
from certs.jwt_rules import (
    MAX_AUDIENCE_CHARS,
    MAX_AUDIENCES,
    check_audiences,
    check_crit,
    numeric_date,
    unverified_claims,
)

DATES = [
    ("NaN", "NaN", "not NaN"),
    ("Infinity", "Infinity", "not Infinity"),
    ("-Infinity", "-Infinity", "not Infinity"),
    ("1e400", "1e400", "not Infinity"),  # Python's json reads it as inf
    ("string", '"1893456000"', "not a string"),
    ("true", "true", "not a boolean"),
    ("fraction", "1893456000.5", "not a fraction"),
    ("negative", "-1", "out of range"),
    ("beyond 2^53", str(2**53 + 1), "out of range"),
    ("huge integer", "1" + "0" * 400, "out of range"),
    ("null", "null", "not null"),
    ("list", "[1]", "a JSON list"),
]


@pytest.mark.parametrize(("name", "text", "words"), DATES, ids=[d[0] for d in DATES])
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_numeric_dates_must_be_whole_seconds(claim: str, name: str, text: str, words: str) -> None:
    claims = json.loads(f'{{"{claim}": {text}}}')
    with pytest.raises(JwtError) as err:
        numeric_date(claims, claim)
    assert f"claim '{claim}' must be a number" in str(err.value) and words in str(err.value)


def test_good_numeric_dates() -> None:
    assert numeric_date({"exp": 1893456000}, "exp") == 1893456000
    assert numeric_date({"exp": 1893456000.0}, "exp") == 1893456000  # an integral JSON float
    assert numeric_date({}, "nbf") is None


CRIT = [
    ("unknown extension", {"crit": ["exp-ext"], "exp-ext": 1}, "does not understand: 'exp-ext'"),
    ("b64 (RFC 7797)", {"crit": ["b64"], "b64": False}, "'b64'"),
    ("empty list", {"crit": []}, "non-empty list"),
    ("not a list", {"crit": "b64"}, "non-empty list"),
    ("not strings", {"crit": [1]}, "non-empty list"),
]


@pytest.mark.parametrize(("name", "header", "words"), CRIT, ids=[c[0] for c in CRIT])
def test_crit_naming_what_we_do_not_understand_is_refused(
    name: str, header: dict[str, Any], words: str
) -> None:
    with pytest.raises(JwtError, match=words):
        check_crit({"alg": "ES256", **header})
    check_crit({"alg": "ES256"})
    check_crit({"crit": ["x"], "x": 1}, understood=frozenset({"x"}))


def test_unverified_claims() -> None:
    body = base64.urlsafe_b64encode(b'{"exp": NaN}').rstrip(b"=").decode()
    claims = unverified_claims(f"e30.{body}.sig")
    assert claims["exp"] != claims["exp"]  # NaN arrives as NaN, for numeric_date to refuse
    for token in ("a.b", "e30.!!!.x", "e30.WzFd.x"):  # two parts, not base64, a JSON list
        with pytest.raises(JwtError, match="not a JWT"):
            unverified_claims(token)


AUDIENCES = [
    ("none", [], "audience is required"),
    ("one too many", [f"a{i}" for i in range(MAX_AUDIENCES + 1)], "at most 16 are allowed"),
    ("between the old limits", [f"a{i}" for i in range(32)], "at most 16"),
    ("too long", ["x" * (MAX_AUDIENCE_CHARS + 1)], "longer than 255 characters"),
    ("empty", ["ok", ""], "an audience is empty"),
    ("comma", ["a,b"], "comma"),
    ("space", ["two words"], "printable ASCII"),
    ("control", ["bad\x1b[31m"], "control characters"),
    ("non-ASCII", ["añd"], "printable ASCII"),
]


@pytest.mark.parametrize(("name", "audiences", "words"), AUDIENCES, ids=[a[0] for a in AUDIENCES])
def test_one_audience_limit(name: str, audiences: list[str], words: str) -> None:
    with pytest.raises(InvalidAudience, match=words) as err:
        check_audiences(audiences)
    assert "\x1b" not in str(err.value)


def test_audiences_within_the_limit() -> None:
    most = [f"aud-{i}" for i in range(MAX_AUDIENCES - 1)] + ["aud-0"]
    assert check_audiences(most) == tuple(most[:-1])  # duplicates dropped, order kept
    assert check_audiences(["x" * MAX_AUDIENCE_CHARS]) == ("x" * MAX_AUDIENCE_CHARS,)
