"""The HSM unit tests use a real SoftHSM2 token of their own (tests/support/softhsm.py)."""

from tests.support.softhsm import softhsm  # noqa: F401  (a fixture, used by name)
