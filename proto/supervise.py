"""Long-running tasks that come back: one supervisor for the hub's and the agent's loops.

A supervised task that raises is logged with its traceback, counted, and started again after
a backoff (1 s doubling to a minute); one that returns has finished on purpose (e.g. the
poller of a repo that left hub.yaml). Restarts and the last error are kept per task, for
`/metrics` and `fleetops-hub status`. Shared by hub and agent, which may import only `proto`;
it must never import either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("fleetops")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


@dataclasses.dataclass
class TaskState:
    name: str
    restarts: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    running: bool = False


class Supervisor:
    def __init__(self, stop: asyncio.Event, *, first: float = BACKOFF_FIRST) -> None:
        self._stop = stop
        self._first = first
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `factory()` under supervision (a task of that name still running is kept)."""
        task = self._tasks.get(name)
        if task is not None and not task.done():
            return task
        state = self.states.setdefault(name, TaskState(name))
        task = asyncio.create_task(self._run(state, factory), name=name)
        self._tasks[name] = task
        return task

    async def _run(self, state: TaskState, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = self._first
        while not self._stop.is_set():
            state.running = True
            started = time.monotonic()
            try:
                await factory()
                return  # finished on purpose
            except asyncio.CancelledError:
                raise
            except Exception as e:
                state.restarts += 1
                state.last_error = f"{type(e).__name__}: {e}"[:500]
                state.last_error_at = time.time()
                log.exception(
                    "%s stopped on an error (restart %d in %.0f s)",
                    state.name,
                    state.restarts,
                    backoff,
                )
            finally:
                state.running = False
            if time.monotonic() - started > 10 * BACKOFF_MAX:
                backoff = self._first  # it ran well for a while: start over
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
