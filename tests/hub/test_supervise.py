"""The supervisor brings a crashed loop back with backoff and keeps count; a loop that
returns is left finished; stop ends everything."""

from __future__ import annotations

import asyncio

from fleetops.proto import supervise
from tests.support import wait


async def test_a_crashing_task_is_restarted_and_counted() -> None:
    stop = asyncio.Event()
    sup = supervise.Supervisor(stop, first=0.01)
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await stop.wait()

    sup.start("poller platform", flaky)
    await wait.until("the third run", lambda: len(runs) == 3)
    state = sup.states["poller platform"]
    assert state.restarts == 2 and state.last_error == "RuntimeError: boom 2" and state.running
    await sup.stop()
    assert not state.running


async def test_a_task_that_returns_is_not_restarted() -> None:
    stop = asyncio.Event()
    sup = supervise.Supervisor(stop, first=0.01)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    task = sup.start("poller gone", once)
    await task
    assert runs == [1] and sup.states["poller gone"].restarts == 0
    await sup.stop()
