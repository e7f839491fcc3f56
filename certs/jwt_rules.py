"""Rules every JWT reader and writer of Bulwark shares: the CA (service-account tokens,
JWT-SVIDs it mints) and the agent (JWT-SVIDs it validates and requests).

- `numeric_date`: `exp`, `nbf`, `iat` are integers of seconds since 1970 (RFC 7519 §2
  NumericDate, without fractions): NaN, Infinity (JSON `1e400` reads as Infinity),
  fractions, strings and booleans are refused, and so are values beyond 2^53.
- `check_crit`: a JOSE `crit` header naming an extension the reader does not understand
  is refused (RFC 7515 §4.1.11). Bulwark understands none.
- `check_audiences`: ONE limit on JWT-SVID audiences, so that the agent refuses at once
  (INVALID_ARGUMENT) what the CA would refuse, instead of passing it on.
- `expired_words`, `not_yet_valid_words`: a refusal for time says by how much, by whose
  clock, and names the clocks as suspects when the gap is too large for a merely stale token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from certs.errors import InvalidAudience, JwtError
from certs.values import format_duration

MAX_NUMERIC_DATE = 2**53  # beyond any real date; exact as a float
MAX_AUDIENCES = 16
MAX_AUDIENCE_CHARS = 255
# An expired token this far past its `exp` is more likely a wrong clock than a token a
# client forgot to refresh (Kubernetes refreshes projected tokens at 80% of their life).
CLOCK_SUSPECT_S = 300


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, NOT verified: for checks of form before the signature."""
    return _segment(token, 0, "header")


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, NOT verified: for checks of form before the signature's."""
    return _segment(token, 1, "claims set")


def _segment(token: str, index: int, what: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT: a compact JWS has three dot-separated parts")
    try:
        value = json.loads(base64.urlsafe_b64decode(parts[index] + "=" * (-len(parts[index]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise JwtError(f"not a JWT: its {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise JwtError(f"not a JWT: its {what} is not a JSON object")
    return value


def numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    """The claim `name` as whole seconds since 1970, None if absent; `JwtError` if it is not
    a finite integer in [0, 2^53]."""
    if name not in claims:
        return None
    value = claims[name]
    problem = _date_problem(value)
    if problem:
        raise JwtError(f"claim {name!r} must be a number (whole seconds since 1970), not {problem}")
    return int(value)


def _date_problem(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity"
        if not value.is_integer():
            return "a fraction"
    elif not isinstance(value, int):
        return f"a JSON {type(value).__name__}" if value is not None else "null"
    if not 0 <= value <= MAX_NUMERIC_DATE:
        return "a value out of range"
    return ""


def _date_or_none(claims: Mapping[str, Any], name: str) -> int | None:
    try:
        return numeric_date(claims, name)
    except JwtError:
        return None


def expired_words(claims: Mapping[str, Any], now: float, *, clock: str) -> str:
    """`token has expired: 2h3m ago by <clock>`, naming the clocks when that is long ago."""
    exp = _date_or_none(claims, "exp")
    if exp is None:
        return "token has expired"
    ago = now - exp
    words = f"token has expired: {format_duration(ago)} ago by {clock}"
    if ago >= CLOCK_SUSPECT_S:
        words += (
            f"; if the client's token is current, {clock} or the token issuer's is wrong "
            "(check NTP on both)"
        )
    return words


def not_yet_valid_words(claims: Mapping[str, Any], now: float, *, clock: str) -> str:
    """`token is not valid yet: for another 7m by <clock>`: beyond the leeway only a clock set
    wrong (here or at the issuer) dates a token in the future, so it is always named."""
    dates = [d for d in (_date_or_none(claims, "nbf"), _date_or_none(claims, "iat")) if d]
    if not dates:
        return "token is not valid yet (nbf/iat in the future)"
    ahead = max(dates) - now
    return (
        f"token is not valid yet: for another {format_duration(ahead)} by {clock} (nbf/iat in "
        f"the future), so {clock} or the token issuer's is wrong (check NTP on both)"
    )


def check_crit(header: Mapping[str, Any], understood: frozenset[str] = frozenset()) -> None:
    """`JwtError` if the header has a `crit` member (malformed, or naming an extension not in
    `understood`)."""
    if "crit" not in header:
        return
    crit = header["crit"]
    if not isinstance(crit, list) or not crit or not all(isinstance(e, str) for e in crit):
        raise JwtError("the JOSE header's 'crit' must be a non-empty list of names")
    unknown = [e for e in crit if e not in understood]
    if unknown:
        shown = ", ".join(ascii(e)[:66] for e in unknown[:4])
        raise JwtError(
            f"the JOSE header's 'crit' names extensions this validator does not "
            f"understand: {shown} (RFC 7515 §4.1.11)"
        )


def check_audiences(audiences: Sequence[str]) -> tuple[str, ...]:
    """The JWT-SVID audiences, duplicates dropped in order; `InvalidAudience` stating the rule
    broken. At most `MAX_AUDIENCES`, each 1 to `MAX_AUDIENCE_CHARS` printable ASCII characters
    without spaces or commas (the record keeps them comma-separated)."""
    if not audiences:
        raise InvalidAudience("audience is required: name one or more audiences for the JWT-SVID")
    if len(audiences) > MAX_AUDIENCES:
        raise InvalidAudience(f"{len(audiences)} audiences; at most {MAX_AUDIENCES} are allowed")
    for audience in audiences:
        if not audience:
            raise InvalidAudience("an audience is empty")
        if len(audience) > MAX_AUDIENCE_CHARS:
            raise InvalidAudience(
                f"audience {_shown(audience)} is longer than {MAX_AUDIENCE_CHARS} characters"
            )
        if "," in audience:
            raise InvalidAudience(f"audience {_shown(audience)} must not contain a comma")
        if not all("!" <= c <= "~" for c in audience):
            raise InvalidAudience(
                f"audience {_shown(audience)} must be printable ASCII without spaces "
                "or control characters"
            )
    return tuple(dict.fromkeys(audiences))


def _shown(text: str) -> str:
    """An audience quoted with escapes, cut to 64 characters (it may hold anything)."""
    return ascii(text[:64]) + ("..." if len(text) > 64 else "")
