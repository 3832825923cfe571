"""The one way tests wait: poll a condition until a deadline, then fail saying what never
happened (and what was last seen). No sleeps to let time pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    what: str,
    probe: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    *,
    within: float = 15.0,
    every: float = 0.05,
) -> T:
    """The first truthy value `probe` returns (it may be a coroutine function)."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        got = probe()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got  # type: ignore[return-value]
        last = got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {within:.0f} s (last: {last!r})")
        await asyncio.sleep(every)
