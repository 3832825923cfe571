"""Fixtures the tests/hub modules share: `reg`, a real registry (tests.support.imagefleet)."""

from tests.support.imagefleet import reg  # noqa: F401  (a pytest fixture, found by its name)
