"""One app across the fleet: per cluster desired and applied revision, sync, health, what
gates the next revision, reason; the selected cluster's resources with their drifted fields.
Every string from the hub goes through `tui.text`, so it is shown literally."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from fleetops.proto.v1 import types_pb2
from fleetops.tui import columns, model, text
from fleetops.tui.screens import base, rollout

STYLE = model.LEVEL_STYLE
SCROLLBAR = 2  # kept free so a long list's scrollbar does not push the message off


class AppDetail(base.FleetScreen):
    # The clusters table is as tall as its rows (up to half the screen), so the resources
    # follow it without a gap and take the rest.
    CSS = """
    AppDetail #clusters {
        height: auto;
        max-height: 50%;
    }
    AppDetail #resources {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("o", "open_rollout", "rollout"),
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, app_name: str) -> None:
        super().__init__()
        self.app_name = app_name
        self._cluster = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="summary")
        yield DataTable(id="clusters", cursor_type="row")
        yield Static("resources of the selected cluster", id="resources-title")
        yield DataTable(id="resources", cursor_type="row")
        yield Static("", id="drift")
        yield Footer()

    def on_mount(self) -> None:
        self.title = text.visible(f"app {self.app_name}")
        self.refresh_view()

    def refresh_view(self) -> None:
        fleet = self.fleet_app.fleet
        app = fleet.apps.get(self.app_name)
        summary = self.query_one("#summary", Static)
        if app is None:
            summary.update(text.line("app ", self.app_name, " is no longer in hub.yaml"))
            return
        head = text.line(
            app.repo,
            ":",
            app.path,
            " → namespace ",
            app.namespace or "-",
            "   head ",
            model.short(app.head_revision),
            model.head_words(fleet.repos.get(app.repo), app.head_revision),
            f"   pinned {model.short(app.pinned_revision)}" if app.pinned_revision else "",
            "   PAUSED" if app.paused else "",
        )
        errors = [
            row
            for t in app.targets
            if t.render_error
            for row in text.paragraph(t.render_error, first=f"render error {t.name}: ")
        ]
        summary.update(text.lines([head, *errors]))
        table = self.query_one("#clusters", DataTable)
        selected = table.cursor_row
        table.clear(columns=True)
        table.add_columns(
            "CLUSTER", "TARGET", "DESIRED", "APPLIED", "SYNC", "HEALTH", "GATE", "REASON"
        )
        cells = sorted(
            (c for (_cl, a), c in fleet.cells.items() if a == self.app_name),
            key=lambda c: c.cluster,
        )
        for cell in cells:
            style = STYLE[model.level(cell)]
            table.add_row(
                text.plain(cell.cluster),
                text.plain(cell.target),
                text.plain(model.short(cell.desired_revision)),
                text.plain(model.short(cell.applied_revision)),
                Text(model.sync_name(cell.sync), style=style),
                Text(model.health_name(cell.health), style=style),
                text.plain(model.gate(cell, app, fleet.clusters.get(cell.cluster))),
                text.plain(cell.reason),
                key=cell.cluster,
            )
        if cells:
            table.move_cursor(row=min(selected, len(cells) - 1))
            self.show_resources(cells[table.cursor_row].cluster)

    def action_open_rollout(self) -> None:
        self.app.push_screen(rollout.RolloutScreen(self.app_name))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None:
            return
        if event.data_table.id == "clusters":
            self.show_resources(str(event.row_key.value))
        elif event.data_table.id == "resources":
            self.show_drift(event.cursor_row)

    def show_drift(self, index: int) -> None:
        """The selected resource's drift as a diff: what Git says (+), what runs (-)."""
        box = self.query_one("#drift", Static)
        cell = self.fleet_app.fleet.cells.get((self._cluster, self.app_name))
        if cell is None or not 0 <= index < len(cell.resources) or not cell.resources[index].drift:
            box.update("")
            box.display = False
            return
        r = cell.resources[index]
        where = f"{r.ref.namespace}/{r.ref.name}" if r.ref.namespace else r.ref.name
        rows = [text.line((f"drift of {r.ref.kind} {where} on {self._cluster}", "bold"))]
        for d in r.drift:
            rows.append(text.line("  ", d.path))
            rows.append(text.line((f"  - live  {d.live}", "red")))
            rows.append(text.line((f"  + git   {d.desired}", "green")))
        box.update(text.lines(rows))
        box.display = True

    def on_resize(self) -> None:
        if self._cluster:  # the columns follow the width
            self.show_resources(self._cluster)

    def show_resources(self, cluster: str) -> None:
        """The cluster's resources, the columns fitted to the table's width: kind and object
        as wide as they need (squeezed last, with an ellipsis), the message takes the rest."""
        cell = self.fleet_app.fleet.cells.get((cluster, self.app_name))
        table = self.query_one("#resources", DataTable)
        # the same cluster again (a resize, a status update): the selected resource stays
        selected = table.cursor_row if cluster == self._cluster else 0
        self.query_one("#resources-title", Static).update(text.line("resources on ", cluster))
        self._cluster = cluster
        self.show_drift(-1)
        resources = list(cell.resources) if cell is not None else []
        # a HOOK column (the sync hook's phases) only when the app has hooks on this cluster
        hooks = any(r.hook for r in resources)
        rows = [
            [
                text.plain(r.ref.kind),
                text.plain(f"{r.ref.namespace}/{r.ref.name}" if r.ref.namespace else r.ref.name),
                *([text.plain(r.hook)] if hooks else []),
                text.plain(model.sync_name(r.sync)),
                text.plain(model.health_name(r.health)),
                text.plain(drift, "dark_orange")
                if (drift := drift_line(r))
                else text.plain(r.message),
            ]
            for r in resources
        ]
        labels = [
            "KIND",
            "OBJECT",
            *(["HOOK"] if hooks else []),
            "SYNC",
            "HEALTH",
            "MESSAGE / DRIFT",
        ]
        floors = [10, 20, *([8] if hooks else []), 0, 0, 16]
        specs = [
            columns.Column(
                label,
                tuple(row[i].plain for row in rows),
                floor=floors[i],
                rest=i == len(labels) - 1,
                comfort=40,
            )
            for i, label in enumerate(labels)
        ]
        widths = columns.fit(specs, self.size.width - SCROLLBAR)  # the table spans the screen
        table.clear(columns=True)
        for label, width in zip(labels, widths, strict=True):
            table.add_column(label, width=width)
        object_at = 1
        for row in rows:
            table.add_row(
                *(
                    (columns.middle if i == object_at else columns.end)(value, widths[i])
                    for i, value in enumerate(row)
                )
            )
        if rows and selected > 0:
            table.move_cursor(row=min(selected, len(rows) - 1))


def drift_line(r: types_pb2.ResourceStatus) -> str:
    return "; ".join(f"{d.path}: Git {d.desired} ≠ live {d.live}" for d in r.drift)
