"""The fleet at a glance: clusters x apps, worst-wins colours, counts, filter, actions."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import Footer, Header, Input, Static

from fleetops.proto.v1 import types_pb2
from fleetops.tui import messages, model, text
from fleetops.tui.screens import (
    app_detail,
    base,
    cluster_detail,
    confirm,
    help,
    history,
    rollout,
)
from fleetops.tui.widgets import matrix

STYLE = model.LEVEL_STYLE


class Overview(base.FleetScreen):
    BINDINGS = [
        Binding("slash", "filter", "filter"),
        Binding("o", "sort", "sort"),
        Binding("s", "sync", "sync"),
        Binding("u", "unpin", "unpin"),
        Binding("p", "pause", "pause/resume"),
        Binding("h", "history", "history / roll back"),
        Binding("R", "open_rollout", "rollout"),
        Binding("c", "open_cluster", "cluster"),
        Binding("question_mark", "help", "help"),
        Binding("q", "app.quit", "quit"),
        Binding("escape", "clear_filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_text = ""
        self.sort = "name"
        self._painted_shape = -1
        self._compact = False
        self._paint_timer: Timer | None = None
        # what the matrix shows, to keep the per-app counts without recounting the fleet
        self._shown: dict[tuple[str, str], int] = {}
        self._column_levels: dict[str, list[int]] = {}
        self._counts_text = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting to the hub…", id="connection")
        yield Input(placeholder="filter: cluster, env=prod, group=canary, Degraded …", id="filter")
        yield matrix.Matrix(id="matrix", fixed_columns=3)
        yield Static("", id="counts")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#matrix", matrix.Matrix).focus()  # keys go to the matrix
        self.refresh_matrix()

    # ------------------------------------------------------------ painting

    def on_fleet_changed(self, _msg: messages.FleetChanged) -> None:
        fleet = self.fleet_app.fleet
        if fleet.shape != self._painted_shape:
            self.refresh_matrix()  # new clusters or apps: lay the table out again
            return
        # A busy fleet changes many times a second; the matrix follows at most four times a
        # second, so key presses never queue behind repaints.
        if self._paint_timer is None:
            self._paint_timer = self.set_timer(0.25, self._paint_changes)

    def _paint_changes(self) -> None:
        self._paint_timer = None
        if self.query_text or self.sort != "name":
            self.refresh_matrix()  # rows may enter, leave or move
        else:
            self.update_cells()

    def _cell(self, cluster: str, app: str) -> tuple[Text, int | None]:
        cell = self.fleet_app.fleet.cells.get((cluster, app))
        if cell is None:
            return Text("·"), None
        lvl = model.level(cell)
        return text.plain(model.cell_text(cell, compact=self._compact), STYLE[lvl]), lvl

    def _row_head(self, cluster: str) -> list[Text]:
        fleet = self.fleet_app.fleet
        lvl = fleet.row_level(cluster)
        ok, total = fleet.row_counts(cluster)
        return [
            text.plain(cluster, STYLE[lvl]),
            self._agent_text(fleet.clusters[cluster]),
            Text(f"{ok}/{total}", style=STYLE[lvl]),
        ]

    def _column_label(self, app: str) -> Text:
        levels = self._column_levels.get(app, [0, 0, 0, 0])
        worst = max((i for i, n in enumerate(levels) if n), default=model.OK)
        paused = " ⏸" if self.fleet_app.fleet.apps[app].paused else ""
        return text.plain(f"{app}{paused} {levels[model.OK]}/{sum(levels)}", STYLE[worst])

    def _count(self, key: tuple[str, str], lvl: int | None) -> None:
        old = self._shown.pop(key, None)
        levels = self._column_levels.setdefault(key[1], [0, 0, 0, 0])
        if old is not None:
            levels[old] -= 1
        if lvl is not None:
            levels[lvl] += 1
            self._shown[key] = lvl

    def update_cells(self) -> None:
        """Repaint only what changed: a busy fleet must not cost a full matrix per tick."""
        fleet = self.fleet_app.fleet
        table = self.query_one("#matrix", matrix.Matrix)
        dirty, fleet.dirty = fleet.dirty, set()
        changes: dict[tuple[str, str], Text] = {}
        rows, columns = set(), set()
        for cluster, app in dirty:
            if cluster not in fleet.clusters:
                continue
            rows.add(cluster)
            if app and app in fleet.apps:
                shown, lvl = self._cell(cluster, app)
                changes[(cluster, app)] = shown
                self._count((cluster, app), lvl)
                columns.add(app)
        for cluster in rows:
            for key, shown in zip(("cluster", "agent", "ok"), self._row_head(cluster), strict=True):
                changes[(cluster, key)] = shown
        table.update_cells(changes)
        for app in columns:
            table.set_header(app, self._column_label(app))
        if changes:
            self._show_counts(table.rows)

    @staticmethod
    def _agent_text(info: types_pb2.Cluster) -> Text:
        conn = info.connectivity
        if conn == types_pb2.CONNECTIVITY_CONNECTED:
            return Text("Connected", style="green")
        if conn == types_pb2.CONNECTIVITY_DISCONNECTED and info.last_seen.seconds:
            seen = time.strftime("%H:%M", time.gmtime(info.last_seen.seconds))
            return Text(f"Lost {seen}Z", style="dark_orange")
        return Text(model.connectivity_name(conn), style="dark_orange")

    def on_resize(self) -> None:
        self.refresh_matrix()

    def on_connection_changed(self, msg: messages.ConnectionChanged) -> None:
        line = self.query_one("#connection", Static)
        line.update(text.plain(msg.detail, "green" if msg.live else "bold dark_orange"))
        line.set_class(not msg.live, "stale")
        self.query_one("#matrix", matrix.Matrix).set_class(not msg.live, "stale")

    def refresh_matrix(self) -> None:
        fleet = self.fleet_app.fleet
        table = self.query_one("#matrix", matrix.Matrix)
        apps = sorted(fleet.apps)
        clusters = fleet.cluster_names(self.query_text, self.sort)
        fleet.dirty.clear()
        self._painted_shape = fleet.shape
        # narrow terminals (80 columns) get short cells so the matrix needs no side scrolling
        self._compact = bool(apps) and (self.size.width - 40) / len(apps) < 30
        self._shown, self._column_levels = {}, {}
        rows = []
        for c in clusters:
            cells = []
            for a in apps:
                shown, lvl = self._cell(c, a)
                self._count((c, a), lvl)
                cells.append(shown)
            rows.append((c, [*self._row_head(c), *cells]))
        columns = [
            ("cluster", Text("CLUSTER")),
            ("agent", Text("AGENT")),
            ("ok", Text("OK")),
            *((a, self._column_label(a)) for a in apps),
        ]
        table.set_table(columns, rows)
        self._show_counts(clusters)
        self.sub_title = f"{len(fleet.clusters)} clusters · {len(fleet.apps)} apps"

    def _show_counts(self, clusters: list[str]) -> None:
        fleet = self.fleet_app.fleet
        levels = [0, 0, 0, 0]
        for column in self._column_levels.values():
            for i, n in enumerate(column):
                levels[i] += n
        total = sum(levels)
        bad = levels[model.WARN] + levels[model.BAD]
        counts = (
            f"{len(clusters)} of {len(fleet.clusters)} clusters, {len(fleet.apps)} apps: "
            f"{levels[model.OK]}/{total} ok"
            + (f", {bad} need attention" if bad else "")
            + (f"   filter: {self.query_text}" if self.query_text else "")
        )
        if counts != self._counts_text:
            self._counts_text = counts
            self.query_one("#counts", Static).update(text.line(counts), layout=False)

    # ------------------------------------------------------------ where the cursor is

    def current(self) -> tuple[str, str]:
        """(cluster, app) under the cursor; app is '' on the leading columns."""
        row, column = self.query_one("#matrix", matrix.Matrix).cursor
        return row, "" if column in ("cluster", "agent", "ok") else column

    def _app_or_say(self) -> str:
        _cluster, app = self.current()
        if not app:
            self.notify("move to an app's column first", severity="warning")
        return app

    # ------------------------------------------------------------ actions

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip()
        self.refresh_matrix()

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.query_one("#matrix", matrix.Matrix).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.query_one("#matrix", matrix.Matrix).focus()

    def action_sort(self) -> None:
        self.sort = "worst" if self.sort == "name" else "name"
        self.notify(f"sorted by {'worst first' if self.sort == 'worst' else 'name'}")
        self.refresh_matrix()

    def action_help(self) -> None:
        self.app.push_screen(help.Help())

    def action_open_app(self) -> None:
        app = self._app_or_say()
        if app:
            self.app.push_screen(app_detail.AppDetail(app))

    def action_open_rollout(self) -> None:
        app = self._app_or_say()
        if app:
            self.app.push_screen(rollout.RolloutScreen(app))

    def action_open_cluster(self) -> None:
        cluster, _app = self.current()
        if cluster:
            self.app.push_screen(cluster_detail.ClusterDetail(cluster))

    def action_history(self) -> None:
        app = self._app_or_say()
        if app:
            self.app.push_screen(history.History(app))

    def on_matrix_cell_selected(self, _event: matrix.Matrix.CellSelected) -> None:
        _cluster, app = self.current()
        if app:
            self.action_open_app()
        else:
            self.action_open_cluster()

    def action_sync(self) -> None:
        app = self._app_or_say()
        if app:
            self._ask(text.line("Sync ", (app, "bold"), " on every cluster now?"), "sync", app)

    def action_unpin(self) -> None:
        app = self._app_or_say()
        if app:
            question = text.line("Unpin ", (app, "bold"), "? Auto-sync takes over again.")
            self._ask(question, "unpin", app)

    def action_pause(self) -> None:
        app = self._app_or_say()
        if app:
            paused = self.fleet_app.fleet.apps[app].paused
            verb = "Resume" if paused else "Pause"
            self._ask(
                text.line(f"{verb} ", (app, "bold"), "?"), "resume" if paused else "pause", app
            )

    def _ask(self, question: Text, action: str, app: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.fleet_app.act(action, app)

        self.app.push_screen(confirm.Confirm(question), answered)
