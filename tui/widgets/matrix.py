"""The fleet matrix: a DataTable whose cell updates cost one cell, not the whole table.

Textual's DataTable keys every render cache on one table-wide update counter, so any
`update_cell` makes the next frame re-render every visible cell; with a thousand clusters
changing many times a second, key presses queue behind those repaints. `update_cell` here
drops only the cached renders of that cell and its row. It relies on the cache layout of the
pinned textual version (pyproject pins it for the snapshots too); if an upgrade changes the
layout, `test_a_changed_cell_is_repainted` fails rather than the matrix going stale.
"""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey


class Matrix(DataTable[Any]):
    def update_cell(
        self,
        row_key: RowKey | str,
        column_key: ColumnKey | str,
        value: Any,
        *,
        update_width: bool = False,
    ) -> None:
        if update_width:
            super().update_cell(row_key, column_key, value, update_width=True)
            return
        self.update_cells(
            {
                (
                    str(getattr(row_key, "value", row_key)),
                    str(getattr(column_key, "value", column_key)),
                ): value
            }
        )

    def update_cells(self, changes: dict[tuple[str, str], Any]) -> None:
        """Set many cells, then drop the cached renders of just those cells and their rows,
        in one pass over the caches."""
        cells: set[tuple[RowKey, ColumnKey]] = set()
        for (row_name, column_name), value in changes.items():
            row, column = RowKey(row_name), ColumnKey(column_name)
            if row not in self._row_locations or column not in self._column_locations:
                super().update_cell(row, column, value)  # raises CellDoesNotExist, as documented
            self._data[row][column] = value
            cells.add((row, column))
        if not cells:
            return
        rows = {row for row, _ in cells}
        indexes = {self._row_locations.get(row) for row in rows}
        for renderables_key in [k for k in self._row_renderable_cache.keys() if k[1] in indexes]:
            self._row_renderable_cache.discard(renderables_key)
        for cell_key in [k for k in self._cell_render_cache.keys() if (k[0], k[1]) in cells]:
            self._cell_render_cache.discard(cell_key)
        for row_cache_key in [k for k in self._row_render_cache.keys() if k[0] in rows]:
            self._row_render_cache.discard(row_cache_key)
        self._line_cache.clear()  # lines are reassembled from the cached rows: cheap
        self.refresh()
