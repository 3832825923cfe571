"""Column widths for a table that has a fixed width to fill: every column gets what its
widest cell needs, the widest-but-squeezable ones give way down to a floor, and one
column (a message) takes the rest. Pure (no Textual): the app screen's resources table
asks it, and its tests run without a terminal. It never cuts a column below its floor;
a table that still does not fit scrolls sideways."""

from __future__ import annotations

import dataclasses

from rich.cells import cell_len
from rich.text import Text

ELLIPSIS = "…"
PADDING = 2  # a DataTable cell's padding, one each side


@dataclasses.dataclass(frozen=True)
class Column:
    label: str
    cells: tuple[str, ...]
    floor: int = 0  # squeezed no narrower than this; 0: never squeezed
    rest: bool = False  # takes what the others leave (at least its floor)
    comfort: int = 0  # the rest column: kept this wide (or its natural width) while others give

    @property
    def natural(self) -> int:
        return max([cell_len(self.label), *(cell_len(c) for c in self.cells)])


def fit(columns: list[Column], width: int) -> list[int]:
    """Each column's width, so that together (with cell padding) they fill `width`.
    Squeezable columns give way widest first, down to their floors, while the rest column
    keeps its comfortable width; when that is not enough, it too goes down to its floor."""
    comfortable = [
        dataclasses.replace(c, floor=max(c.floor, min(c.natural, c.comfort))) if c.rest else c
        for c in columns
    ]
    widths = _fit(comfortable, width)
    if sum(widths) + PADDING * len(columns) <= width:
        return widths
    return _fit(columns, width)


def _fit(columns: list[Column], width: int) -> list[int]:
    widths = [c.floor if c.rest else c.natural for c in columns]
    over = sum(widths) + PADDING * len(columns) - width
    while over > 0:
        squeezable = [
            i for i, c in enumerate(columns) if c.floor and not c.rest and widths[i] > c.floor
        ]
        if not squeezable:
            break
        widest = max(squeezable, key=lambda i: widths[i])
        others = [widths[i] for i in squeezable if i != widest]
        step = min(over, widths[widest] - columns[widest].floor)
        if others:  # down to the next widest at most, so they shrink together
            step = min(step, max(1, widths[widest] - max(others)))
        widths[widest] -= step
        over -= step
    for i, c in enumerate(columns):
        if c.rest:
            widths[i] = max(c.floor, c.floor - over)
    return widths


def end(value: Text, width: int) -> Text:
    """`value` cut to `width` cells, an ellipsis where it was cut."""
    if value.cell_len <= width:
        return value
    cut = value.copy()
    cut.truncate(width, overflow="ellipsis")
    return cut


def middle(value: Text, width: int) -> Text:
    """`value` cut to `width` cells in the middle (a namespace/name keeps the namespace,
    or its start, and the name's end, where generated names differ), an ellipsis where it
    was cut."""
    if value.cell_len <= width:
        return value
    if width < 8 or value.cell_len != len(value.plain):  # too narrow, or wide characters
        return end(value, width)
    keep = width - cell_len(ELLIPSIS)
    head = keep // 3
    slash = value.plain.find("/") + 1
    if 0 < slash <= keep // 2:  # the whole namespace, when it leaves half for the name
        head = slash
    tail = keep - head
    cut = value[:head]
    cut.append(ELLIPSIS)
    cut.append_text(value[len(value.plain) - tail :])
    return cut
