"""The fleet at a glance: clusters x apps, worst-wins colours, counts, filter, actions."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static

from proto.fleetops.v1 import types_pb2
from tui import messages, model
from tui.screens import app_detail, base, cluster_detail, confirm, help, history
from tui.widgets import matrix

STYLE = model.LEVEL_STYLE


class Overview(base.FleetScreen):
    BINDINGS = [
        Binding("slash", "filter", "filter"),
        Binding("o", "sort", "sort"),
        Binding("enter", "open_app", "app", show=False),
        Binding("s", "sync", "sync"),
        Binding("u", "unpin", "unpin"),
        Binding("p", "pause", "pause/resume"),
        Binding("h", "history", "history / roll back"),
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

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting to the hub…", id="connection")
        yield Input(placeholder="filter: cluster, env=prod, Degraded …", id="filter")
        yield matrix.Matrix(id="matrix", zebra_stripes=True)
        yield Static("", id="counts")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        table = self.query_one("#matrix", DataTable)
        table.cursor_type = "cell"
        table.focus()  # keys go to the matrix, not to the hidden filter box
        self.refresh_matrix()

    # ------------------------------------------------------------ painting

    def on_fleet_changed(self, _msg: messages.FleetChanged) -> None:
        fleet = self.fleet_app.fleet
        if fleet.shape != self._painted_shape:
            self.refresh_matrix()  # new clusters or apps: lay the table out again
            return
        # A busy fleet changes many times a second; the table follows at most four times a
        # second, so key presses never queue behind repaints.
        if self._paint_timer is None:
            self._paint_timer = self.set_timer(0.25, self._paint_changes)

    def _paint_changes(self) -> None:
        self._paint_timer = None
        if self.query_text or self.sort != "name":
            self.refresh_matrix()  # rows may enter, leave or move
        else:
            self.update_cells()

    def update_cells(self) -> None:
        """Repaint only what changed: a busy fleet must not cost a full table per tick."""
        fleet = self.fleet_app.fleet
        table = self.query_one("#matrix", matrix.Matrix)
        dirty, fleet.dirty = fleet.dirty, set()
        changes: dict[tuple[str, str], Text] = {}
        rows = set()
        for cluster, app in dirty:
            if cluster not in fleet.clusters:
                continue
            rows.add(cluster)
            if app and app in fleet.apps and (cluster, app) in fleet.cells:
                cell = fleet.cells[(cluster, app)]
                text = model.cell_text(cell, compact=self._compact)
                changes[(cluster, app)] = Text(text, style=STYLE[model.level(cell)])
        for cluster in rows:
            changes[(cluster, "cluster")] = Text(cluster, style=STYLE[fleet.row_level(cluster)])
            changes[(cluster, "agent")] = self._agent_text(fleet.clusters[cluster])
        table.update_cells(changes)

    @staticmethod
    def _agent_text(info: types_pb2.Cluster) -> Text:
        conn = info.connectivity
        ok = conn == types_pb2.CONNECTIVITY_CONNECTED
        return Text(model.CONNECTIVITY[conn], style="green" if ok else "dark_orange")

    def on_resize(self) -> None:
        self.refresh_matrix()

    def on_connection_changed(self, msg: messages.ConnectionChanged) -> None:
        line = self.query_one("#connection", Static)
        line.update(Text(msg.detail, style="green" if msg.live else "bold dark_orange"))
        line.set_class(not msg.live, "stale")

    def refresh_matrix(self) -> None:
        fleet = self.fleet_app.fleet
        table = self.query_one("#matrix", DataTable)
        apps = sorted(fleet.apps)
        clusters = fleet.cluster_names(self.query_text, self.sort)
        cursor = table.cursor_coordinate
        fleet.dirty.clear()
        self._painted_shape = fleet.shape
        table.clear(columns=True)
        table.add_column("CLUSTER", key="cluster")
        table.add_column("AGENT", key="agent")
        for a in apps:
            column_cells = [fleet.cells[(c, a)] for c in clusters if (c, a) in fleet.cells]
            worst = max((model.level(x) for x in column_cells), default=model.OK)
            paused = " ⏸" if fleet.apps[a].paused else ""
            table.add_column(Text(f"{a}{paused}", style=STYLE[worst]), key=a)
        # narrow terminals (80 columns) get short cells so the matrix needs no side scrolling
        compact = bool(apps) and (self.size.width - 34) / len(apps) < 30
        self._compact = compact
        for c in clusters:
            info = fleet.clusters[c]
            row: list[Text] = [
                Text(c, style=STYLE[fleet.row_level(c)]),
                self._agent_text(info),
            ]
            for a in apps:
                cell = fleet.cells.get((c, a))
                row.append(
                    Text(model.cell_text(cell, compact=compact), style=STYLE[model.level(cell)])
                    if cell
                    else Text("·")
                )
            table.add_row(*row, key=c)
        if clusters and apps:
            table.cursor_coordinate = (
                cursor if cursor.row < len(clusters) else cursor._replace(row=0)
            )
        visible = set(clusters)
        shown = [cell for (c, _a), cell in fleet.cells.items() if c in visible]
        self.query_one("#counts", Static).update(
            f"{len(clusters)} of {len(fleet.clusters)} clusters, {len(apps)} apps: "
            f"{fleet.counts(shown)}" + (f"   filter: {self.query_text}" if self.query_text else "")
        )
        self.sub_title = f"{len(fleet.clusters)} clusters · {len(fleet.apps)} apps"

    # ------------------------------------------------------------ where the cursor is

    def current(self) -> tuple[str, str]:
        """(cluster, app) under the cursor; app is '' on the first two columns."""
        table = self.query_one("#matrix", DataTable)
        if not table.row_count:
            return "", ""
        row_key, col_key = table.coordinate_to_cell_key(table.cursor_coordinate)
        col = str(col_key.value)
        return str(row_key.value), "" if col in ("cluster", "agent") else col

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
        self.query_one("#matrix", DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.query_one("#matrix", DataTable).focus()

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

    def action_open_cluster(self) -> None:
        cluster, _app = self.current()
        if cluster:
            self.app.push_screen(cluster_detail.ClusterDetail(cluster))

    def action_history(self) -> None:
        app = self._app_or_say()
        if app:
            self.app.push_screen(history.History(app))

    def on_data_table_cell_selected(self, _event: DataTable.CellSelected) -> None:
        _cluster, app = self.current()
        if app:
            self.action_open_app()
        else:
            self.action_open_cluster()

    def action_sync(self) -> None:
        app = self._app_or_say()
        if app:
            self._ask(f"Sync [b]{app}[/b] on every cluster now?", "sync", app)

    def action_unpin(self) -> None:
        app = self._app_or_say()
        if app:
            self._ask(f"Unpin [b]{app}[/b]? Auto-sync takes over again.", "unpin", app)

    def action_pause(self) -> None:
        app = self._app_or_say()
        if app:
            paused = self.fleet_app.fleet.apps[app].paused
            verb = "Resume" if paused else "Pause"
            self._ask(f"{verb} [b]{app}[/b]?", "resume" if paused else "pause", app)

    def _ask(self, question: str, action: str, app: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.fleet_app.act(action, app)

        self.app.push_screen(confirm.Confirm(question), answered)
