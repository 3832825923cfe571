"""The one way tests wait: poll a condition until a deadline, then fail saying what never
happened (and what was last seen). No sleeps to let time pass.

`until` is for async tests (and takes `pause=pilot.pause` in TUI tests, so the app repaints
between probes); `until_sync` is its twin for tests that drive processes from a plain thread.
Both: `probe` returns something truthy when `what` has happened; exceptions of the types in
`retry_on` count as "not yet" (a probe may race a server that is still starting); `explain`
adds what the test can show about the state when the wait fails (a log tail, the screen)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _failed(
    what: str, within: float, last: object, explain: Callable[[], str] | None
) -> AssertionError:
    said = f"{what} did not happen within {within:.0f} s (last: {last!r})"
    return AssertionError(f"{said}\n{explain()}" if explain else said)


async def until(
    what: str,
    probe: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    *,
    within: float = 15.0,
    every: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
    explain: Callable[[], str] | None = None,
    pause: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """The first truthy value `probe` returns (it may be a coroutine function)."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            got = probe()
            if asyncio.iscoroutine(got):
                got = await got
        except retry_on as e:
            got = None
            last = e
        else:
            if got:
                return got  # type: ignore[return-value]
            last = got
        if time.monotonic() >= deadline:
            raise _failed(what, within, last, explain)
        await pause(every)


def until_sync(
    what: str,
    probe: Callable[[], T | None],
    *,
    within: float = 60.0,
    every: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (),
    explain: Callable[[], str] | None = None,
) -> T:
    """`until` for code that is not async: blocks the calling thread between probes."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            got = probe()
        except retry_on as e:
            last = e
        else:
            if got:
                return got
            last = got
        if time.monotonic() >= deadline:
            raise _failed(what, within, last, explain)
        time.sleep(every)  # the one blocking pause between probes
