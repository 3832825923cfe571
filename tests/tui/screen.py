"""What a TUI test sees of the terminal: the strips the compositor sends to it (the same ones
`export_screenshot` draws), as lines of text, and what in them could act on a terminal.

Also how TUI tests wait for the screen: `tests.support.wait.until`, pausing through
`pilot.pause` (which lets the app process its messages and repaint), failing with what was on
screen."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.pilot import Pilot

from tests.support import wait

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
    """`wait.until`, pausing through the pilot and showing the screen when it fails."""
    await wait.until(
        what, check, within=within, pause=pilot.pause, explain=lambda: terminal(pilot.app).text
    )
