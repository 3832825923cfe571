"""The fleet matrix: clusters down, apps across, one styled cell each, built on Textual's line
API so that its cost follows what changed, not how big the fleet is.

Each row's line is rendered once and kept; a changed cell re-renders its row only, and a
cursor move repaints two lines (the old and the new cursor row). The header row and the first
`fixed_columns` columns stay put while the rest scrolls. (Textual's DataTable keys its render
caches on the cursor position and a table-wide counter, so with a thousand busy clusters every
key press re-rendered every visible row.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

PAD = 1  # one space either side of every cell


@dataclass
class Column:
    key: str
    label: Text
    width: int


class Matrix(ScrollView, can_focus=True):
    """Rows and columns by key, a cell cursor, fixed header and leading columns."""

    COMPONENT_CLASSES = {"matrix--header", "matrix--cursor", "matrix--odd-row"}
    DEFAULT_CSS = """
    Matrix { background: $surface; }
    Matrix > .matrix--header { text-style: bold; background: $panel; color: $foreground; }
    Matrix > .matrix--odd-row { background: $surface-lighten-1; }
    Matrix > .matrix--cursor { background: $block-cursor-blurred-background; }
    Matrix:focus > .matrix--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    """
    BINDINGS = [
        Binding("up", "move(-1, 0)", show=False),
        Binding("down", "move(1, 0)", show=False),
        Binding("left", "move(0, -1)", show=False),
        Binding("right", "move(0, 1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "edge(-1)", show=False),
        Binding("end", "edge(1)", show=False),
        Binding("enter", "select", show=False),
    ]

    class CellSelected(Message):
        """Enter, or a click on the cursor's cell."""

        def __init__(self, matrix: Matrix, row: str, column: str) -> None:
            super().__init__()
            self.matrix = matrix
            self.row = row
            self.column = column

    def __init__(self, *, fixed_columns: int = 0, id: str | None = None) -> None:
        super().__init__(id=id)
        self.fixed_columns = fixed_columns
        self.columns: list[Column] = []
        self.rows: list[str] = []
        self._row_index: dict[str, int] = {}
        self._column_index: dict[str, int] = {}
        self._cells: dict[tuple[str, str], Text] = {}
        self._lines: dict[str, list[Strip]] = {}  # row -> one strip per column, no cursor
        self._assembled: dict[str, tuple[int, int, Strip]] = {}  # row -> (x, width, line)
        self.cursor_row = 0
        self._cursor_column = 0
        self._header: list[Strip] | None = None
        self._styles_key: tuple[object, ...] = ()

    # ------------------------------------------------------------ content

    def set_table(
        self, columns: Sequence[tuple[str, Text]], rows: Iterable[tuple[str, Sequence[Text]]]
    ) -> None:
        """Replace everything; the cursor stays where it was when that still exists."""
        old_row = self.rows[self.cursor_row] if self.rows else ""
        old_col = self.columns[self._cursor_column].key if self.columns else ""
        self.columns = [Column(k, label, label.cell_len) for k, label in columns]
        self._column_index = {c.key: i for i, c in enumerate(self.columns)}
        self.rows, self._cells = [], {}
        for key, cells in rows:
            self.rows.append(key)
            for column, text in zip(self.columns, cells, strict=True):
                self._cells[(key, column.key)] = text
                column.width = max(column.width, text.cell_len)
        self._row_index = {k: i for i, k in enumerate(self.rows)}
        self._lines.clear()
        self._assembled.clear()
        self._header = None
        self._cursor_column = min(self._column_index.get(old_col, self._cursor_column),
                                  max(len(self.columns) - 1, 0))  # fmt: skip
        self._set_cursor_row(self._row_index.get(old_row, min(self.cursor_row, len(self.rows) - 1)))
        self.virtual_size = Size(self._total_width(), len(self.rows) + 1)
        self.refresh()

    def update_cells(self, changes: dict[tuple[str, str], Text]) -> None:
        """Set cells by (row, column); only their rows are rendered again. A cell wider than
        its column widens the column (and then everything repaints)."""
        dirty: set[str] = set()
        widened = False
        for (row, column), text in changes.items():
            if row not in self._row_index or column not in self._column_index:
                continue
            if self._cells.get((row, column)) == text:
                continue
            self._cells[(row, column)] = text
            col = self.columns[self._column_index[column]]
            if text.cell_len > col.width:
                col.width = text.cell_len
                widened = True
            dirty.add(row)
        if widened:
            self._lines.clear()
            self._header = None
            self.virtual_size = Size(self._total_width(), len(self.rows) + 1)
            self.refresh()
            return
        for row in dirty:
            self._lines.pop(row, None)
            self._refresh_row(self._row_index[row])

    def set_header(self, column: str, label: Text) -> None:
        i = self._column_index.get(column)
        if i is None or self.columns[i].label == label:
            return
        self.columns[i].label = label
        self._header = None
        if label.cell_len > self.columns[i].width:
            self.columns[i].width = label.cell_len
            self._lines.clear()
            self.virtual_size = Size(self._total_width(), len(self.rows) + 1)
            self.refresh()
        else:
            self.refresh(Region(0, 0, self.size.width, 1))  # the header line only

    def row_texts(self, row: str) -> list[str]:
        return [self._cells[(row, c.key)].plain for c in self.columns]

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def cursor(self) -> tuple[str, str]:
        """(row, column) keys under the cursor, ('', '') when empty."""
        if not self.rows or not self.columns:
            return "", ""
        return self.rows[self.cursor_row], self.columns[self._cursor_column].key

    def move_cursor(self, *, row: int | None = None, column: int | None = None) -> None:
        if column is not None and self.columns:
            old = self._cursor_column
            self._cursor_column = max(0, min(column, len(self.columns) - 1))
            if old != self._cursor_column:
                self._refresh_row(self.cursor_row)
                self._scroll_to_column(self._cursor_column)
        if row is not None:
            self._set_cursor_row(row)

    # ------------------------------------------------------------ cursor and keys

    def _set_cursor_row(self, row: int) -> None:
        row = max(0, min(row, len(self.rows) - 1)) if self.rows else 0
        old = self.cursor_row
        self.cursor_row = row
        if old != row:
            self._refresh_row(old)
            self._refresh_row(row)
        self._scroll_to_row(row)

    def _scroll_to_row(self, row: int) -> None:
        visible = max(self._view.height - 1, 1)  # minus the header
        top = int(self.scroll_offset.y)
        if row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False, immediate=True)

    def _scroll_to_column(self, index: int) -> None:
        if index < self.fixed_columns:
            return
        fixed = sum(c.width + 2 * PAD for c in self.columns[: self.fixed_columns])
        start = sum(c.width + 2 * PAD for c in self.columns[self.fixed_columns : index])
        width = self.columns[index].width + 2 * PAD
        room = max(self._view.width - fixed, 1)
        left = int(self.scroll_offset.x)
        if start < left:
            self.scroll_to(x=start, animate=False, immediate=True)
        elif start + width > left + room:
            self.scroll_to(x=start + width - room, animate=False, immediate=True)

    def action_move(self, rows: int, columns: int) -> None:
        if columns:
            self.move_cursor(column=self._cursor_column + columns)
        if rows:
            self._set_cursor_row(self.cursor_row + rows)

    def action_page(self, direction: int) -> None:
        self._set_cursor_row(self.cursor_row + direction * max(self._view.height - 2, 1))

    def action_edge(self, direction: int) -> None:
        self._set_cursor_row(0 if direction < 0 else len(self.rows) - 1)

    def action_select(self) -> None:
        row, column = self.cursor
        if row:
            self.post_message(self.CellSelected(self, row, column))

    async def _on_click(self, event: events.Click) -> None:
        hit = self._hit(event.x, event.y)
        if hit is None:
            return
        row, column = hit
        same = (row, column) == (self.cursor_row, self._cursor_column)
        self.move_cursor(row=row, column=column)
        if same or event.chain > 1:
            self.action_select()

    def _hit(self, x: int, y: int) -> tuple[int, int] | None:
        if y < 1:
            return None
        row = int(self.scroll_offset.y) + y - 1
        if row >= len(self.rows):
            return None
        edge = 0
        for i, c in enumerate(self.columns[: self.fixed_columns]):
            edge += c.width + 2 * PAD
            if x < edge:
                return row, i
        x = x - edge + int(self.scroll_offset.x)
        edge = 0
        for i, c in enumerate(self.columns[self.fixed_columns :], start=self.fixed_columns):
            edge += c.width + 2 * PAD
            if x < edge:
                return row, i
        return None

    # ------------------------------------------------------------ rendering

    @property
    def _view(self) -> Size:
        """What is visible of the content: the widget minus its scrollbars."""
        return self.scrollable_content_region.size

    def _total_width(self) -> int:
        return sum(c.width + 2 * PAD for c in self.columns)

    def _refresh_row(self, row: int) -> None:
        y = row - int(self.scroll_offset.y) + 1
        if 1 <= y < self._view.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def _check_styles(self) -> None:
        """Theme or focus changes restyle everything."""
        key = (
            self.rich_style,
            self.has_focus,
            self.get_component_rich_style("matrix--cursor"),
            self.get_component_rich_style("matrix--odd-row"),
        )
        if key != self._styles_key:
            self._styles_key = key
            self._lines.clear()
            self._header = None

    def _cell_strip(self, text: Text, width: int, style: Style) -> Strip:
        segments = [Segment(" " * PAD, style)]
        clipped = text.copy()
        clipped.truncate(width, overflow="ellipsis", pad=True)
        console = self.app.console
        base = style + console.get_style(text.style) if text.style else style
        segments += [
            Segment(s.text, base + s.style if s.style else base)
            for s in clipped.render(console)
            if s.text != "\n"
        ]
        segments.append(Segment(" " * PAD, style))
        return Strip(segments, width + 2 * PAD)

    def _row_strips(self, index: int) -> list[Strip]:
        key = self.rows[index]
        strips = self._lines.get(key)
        if strips is None:
            base = self.rich_style
            if index % 2:
                base = base + self.get_component_rich_style("matrix--odd-row")
            strips = [
                self._cell_strip(self._cells[(key, c.key)], c.width, base) for c in self.columns
            ]
            self._lines[key] = strips
        return strips

    def _header_strips(self) -> list[Strip]:
        if self._header is None:
            style = self.rich_style + self.get_component_rich_style("matrix--header")
            self._header = [self._cell_strip(c.label, c.width, style) for c in self.columns]
        return self._header

    def _assemble(self, strips: list[Strip], width: int) -> Strip:
        fixed = Strip.join(strips[: self.fixed_columns])
        rest = Strip.join(strips[self.fixed_columns :])
        x = int(self.scroll_offset.x)
        room = max(width - fixed.cell_length, 0)
        line = Strip.join([fixed, rest.crop(x, x + room)])
        return line.extend_cell_length(width, self.rich_style)

    def render_lines(self, crop: Region) -> list[Strip]:
        self._check_styles()  # once per frame, not per line
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self._view.width
        if y == 0:
            return self._assemble(self._header_strips(), width)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        key = self.rows[index]
        x = int(self.scroll_offset.x)
        if index != self.cursor_row:
            done = self._assembled.get(key)
            if done is not None and done[0] == x and done[1] == width and key in self._lines:
                return done[2]
        strips = self._row_strips(index)
        if index != self.cursor_row:
            line = self._assemble(strips, width)
            self._assembled[key] = (x, width, line)
            return line
        if self.columns:
            strips = list(strips)
            c = self._cursor_column
            cursor = self.get_component_rich_style("matrix--cursor")
            strips[c] = Strip(
                [Segment(seg.text, (seg.style or Style()) + cursor) for seg in strips[c]],
                strips[c].cell_length,
            )
        return self._assemble(strips, width)
