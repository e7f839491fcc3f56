"""Fixtures of the HSM suite: a SoftHSM2 token per test (tests/support/softhsm.py)."""

from tests.support.softhsm import softhsm  # noqa: F401  (a fixture, used by name)
