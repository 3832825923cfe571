"""The matrix widget on its own: wide fleets scroll sideways with the cluster columns fixed,
the cursor stays in view, clicks move it, Enter and a second click select."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from fleetops.tui.widgets.matrix import Matrix

APPS = [f"app-{i:02d}" for i in range(30)]
CLUSTERS = [f"cluster-{i:03d}" for i in range(100)]


class MatrixApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.selected: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        yield Matrix(id="m", fixed_columns=1)

    def on_mount(self) -> None:
        m = self.query_one(Matrix)
        columns = [("cluster", Text("CLUSTER"))] + [(a, Text(a.upper())) for a in APPS]
        rows = [(c, [Text(c)] + [Text(f"{c[-3:]}/{a[-2:]}") for a in APPS]) for c in CLUSTERS]
        m.set_table(columns, rows)
        m.focus()

    def on_matrix_cell_selected(self, event: Matrix.CellSelected) -> None:
        self.selected.append((event.row, event.column))


def screen_text(app: App[None]) -> str:
    return app.export_screenshot().replace("&#160;", " ")


async def test_wide_matrix_scrolls_sideways_with_the_cluster_column_fixed() -> None:
    app = MatrixApp()
    async with app.run_test(size=(80, 12)) as pilot:
        m = app.query_one(Matrix)
        assert "APP-29" not in screen_text(app)
        await pilot.press(*["right"] * 30)
        assert m.cursor == ("cluster-000", "app-29")
        shot = screen_text(app)
        assert "APP-29" in shot and "000/29" in shot  # the cursor's column came into view
        assert "APP-00" not in shot  # the first apps scrolled away
        assert "CLUSTER" in shot and "cluster-000" in shot  # the fixed column did not
        await pilot.press(*["down"] * 50)
        assert m.cursor == ("cluster-050", "app-29")
        shot = screen_text(app)
        assert "cluster-050" in shot and "cluster-000" not in shot
        await pilot.press("end")
        assert m.cursor[0] == "cluster-099" and "cluster-099" in screen_text(app)
        await pilot.press("home", "enter")
        assert app.selected == [("cluster-000", "app-29")]


async def test_click_moves_the_cursor_and_a_second_click_selects() -> None:
    app = MatrixApp()
    async with app.run_test(size=(100, 12)) as pilot:
        m = app.query_one(Matrix)
        # row 3 on screen is cluster-002 (the header is row 0); x=20 is inside app-00's column
        await pilot.click(Matrix, offset=(20, 3))
        assert m.cursor == ("cluster-002", "app-00")
        assert app.selected == []
        await pilot.click(Matrix, offset=(20, 3))
        assert app.selected == [("cluster-002", "app-00")]


async def test_updated_cells_show_and_widen_their_column() -> None:
    app = MatrixApp()
    async with app.run_test(size=(100, 12)) as pilot:
        m = app.query_one(Matrix)
        m.update_cells({("cluster-001", "app-00"): Text("a much longer cell text")})
        await pilot.pause()
        assert "a much longer cell text" in screen_text(app)
        assert m.row_texts("cluster-001")[1] == "a much longer cell text"
        m.update_cells({("no-such-cluster", "app-00"): Text("ignored")})  # gone meanwhile
        await pilot.pause()
