"""Hypothesis profiles for the property-based fuzzing of the parsers.

`ci` (the default, part of `make test`): few examples, no example database, a few seconds in
all. `fuzz` (`make fuzz`, HYPOTHESIS_PROFILE=fuzz): many examples, failures remembered in
.hypothesis/ so the next run replays them first.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("BULWARK_FUZZ_EXAMPLES", "3000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
