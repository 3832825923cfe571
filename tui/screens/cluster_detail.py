"""One cluster: connectivity and why, its certificate, the labels and groups that decide which
apps it runs, then, apart from them, what its agent says about itself (versions and facts,
shown and never used for targeting), and its apps.

Everything here comes from the hub, and the versions and facts from the agent through it:
every string goes through `tui.text`, so it is shown literally."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from fleetops.tui import model, text
from fleetops.tui.screens import base

STYLE = model.LEVEL_STYLE


def pairs(items: dict[str, str]) -> Text:
    """`k=v, k=v` sorted by key, every key and value shown literally."""
    out = Text(end="")
    for i, (k, v) in enumerate(sorted(items.items())):
        out.append_text(text.line(", " if i else "", k, "=", v))
    return out if items else Text("-")


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
        yield Static("", id="agent-says")
        yield DataTable(id="cluster-apps", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.title = text.visible(f"cluster {self.cluster}")
        self.refresh_view()

    def refresh_view(self) -> None:
        fleet = self.fleet_app.fleet
        info = fleet.clusters.get(self.cluster)
        box = self.query_one("#cluster-info", Static)
        says = self.query_one("#agent-says", Static)
        if info is None:
            box.update(text.line("cluster ", self.cluster, " is no longer registered"))
            says.display = False
            return
        seen = model.utc(info.last_seen.seconds) if info.last_seen.seconds else "never"
        head = text.line(f"{model.connectivity_name(info.connectivity)} (last seen {seen})")
        if info.reason:
            head.append_text(text.line(": ", info.reason))
        cert, cert_level = model.certificate_state(info, self.fleet_app.clock())
        muted = "dim"
        box.update(
            text.lines(
                [
                    head,
                    Text(cert, STYLE[cert_level] if cert_level != model.OK else ""),
                    text.line(
                        "labels ",
                        pairs(dict(info.labels)),
                        ("   (the hub's: these decide which apps it runs)", muted),
                    ),
                    text.line("groups ", ", ".join(info.groups) or "-"),
                ]
            )
        )
        says.display = True
        says.update(
            text.lines(
                [
                    text.line(
                        ("agent says", "bold"),
                        ("   (reported by the agent: shown, never used for targeting)", muted),
                    ),
                    text.line(
                        "  agent ",
                        info.agent_version or "-",
                        "   Kubernetes ",
                        info.kubernetes_version or "-",
                    ),
                    text.line("  facts ", pairs(dict(info.agent_facts))),
                ]
            )
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
                text.plain(cell.app),
                text.plain(cell.target),
                text.plain(model.short(cell.desired_revision)),
                text.plain(model.short(cell.applied_revision)),
                Text(model.sync_name(cell.sync), style=style),
                Text(model.health_name(cell.health), style=style),
                text.plain(cell.reason),
            )
