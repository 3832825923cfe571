"""One cluster: connectivity and why, agent and Kubernetes versions, labels, groups, and its
apps."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from tui import model
from tui.screens import base

STYLE = model.LEVEL_STYLE


class ClusterDetail(base.FleetScreen):
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, cluster: str) -> None:
        super().__init__()
        self.cluster = cluster

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="cluster-info")
        yield DataTable(id="cluster-apps", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"cluster {self.cluster}"
        self.refresh_view()

    def refresh_view(self) -> None:
        fleet = self.fleet_app.fleet
        info = fleet.clusters.get(self.cluster)
        box = self.query_one("#cluster-info", Static)
        if info is None:
            box.update(f"cluster {self.cluster} is no longer registered")
            return
        seen = (
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(info.last_seen.seconds))
            if info.last_seen.seconds
            else "never"
        )
        labels = ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items())) or "-"
        box.update(
            f"{model.CONNECTIVITY[info.connectivity]} (last seen {seen})"
            + (f": {info.reason}" if info.reason else "")
            + f"\nagent {info.agent_version or '-'}   Kubernetes {info.kubernetes_version or '-'}"
            + f"\nlabels {labels}"
            + f"\ngroups {', '.join(info.groups) or '-'}"
        )
        table = self.query_one("#cluster-apps", DataTable)
        table.clear(columns=True)
        table.add_columns("APP", "TARGET", "DESIRED", "APPLIED", "SYNC", "HEALTH", "REASON")
        cells = sorted(
            (c for (cl, _a), c in fleet.cells.items() if cl == self.cluster), key=lambda c: c.app
        )
        for cell in cells:
            style = STYLE[model.level(cell)]
            table.add_row(
                cell.app,
                cell.target,
                model.short(cell.desired_revision),
                model.short(cell.applied_revision),
                Text(model.SYNC[cell.sync], style=style),
                Text(model.HEALTH[cell.health], style=style),
                cell.reason,
            )
