"""What a TUI test sees of the terminal: the strips the compositor sends to it (the same ones
`export_screenshot` draws), as lines of text, and what in them could act on a terminal.

Also the one way TUI tests wait for the screen: poll through `pilot.pause` (which lets the app
process its messages and repaint) until a deadline, then fail naming what never happened and
what was on screen."""

from __future__ import annotations

import asyncio
import dataclasses
import unicodedata
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.pilot import Pilot

# What must never reach a terminal from a segment's text: controls (ESC, BEL, C1 ...),
# format characters (bidi overrides, zero-width), line and paragraph separators.
ACTIVE = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclasses.dataclass(frozen=True)
class Terminal:
    lines: list[str]
    controls: list[str]  # every control or format character sent, as repr
    links: list[str]  # every hyperlink target sent (OSC 8 is what `[link=...]` becomes)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def terminal(app: App[Any]) -> Terminal:
    """The whole screen (modals and notifications included) as the terminal would get it."""
    update = app.screen._compositor.render_full_update()
    lines, controls, links = [], [], []
    for row in update.strips:
        line = []
        for strip in row:
            for segment in strip:
                line.append(segment.text)
                controls += [repr(c) for c in segment.text if unicodedata.category(c) in ACTIVE]
                if segment.style is not None and segment.style.link:
                    links.append(segment.style.link)
        lines.append("".join(line))
    return Terminal(lines, controls, links)


async def until(
    pilot: Pilot[Any], what: str, check: Callable[[], object], within: float = 10.0
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return
        await pilot.pause(0.05)
    shown = terminal(pilot.app).text
    raise AssertionError(f"{what} never happened; on screen:\n{shown}")
