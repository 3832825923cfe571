"""Moved to `tests/support/fleet.py`. This re-export stays only until the importers outside
tests/e2e that still say `from tests.e2e import fleet` switch to `tests.support`."""

from tests.support.fleet import *  # noqa: F403
from tests.support.fleet import (  # noqa: F401
    BIN,
    FleetClient,
    Hub,
    Process,
    Repo,
    converged,
    describe,
    git,
    start_agent,
    start_hub,
    wait_for,
)
