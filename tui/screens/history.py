"""An app's history (who, what, when, why), and rolling back to a revision picked from it.
Each revision is shown in Git's own words: the commit's author and subject next to its SHA.
Event messages, actors, kinds and commit text come from the hub (and through it from agents and
committers): every string goes through `tui.text`, so it is shown literally."""

from __future__ import annotations

import time

import grpc
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from fleetops.tui import model, text
from fleetops.tui.screens import base, confirm


class History(base.FleetScreen):
    BINDINGS = [
        Binding("r", "rollback", "roll back to this revision"),
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, app_name: str) -> None:
        super().__init__()
        self.app_name = app_name
        self.revisions: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading history…", id="history-status")
        yield DataTable(id="events", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = text.visible(f"history of {self.app_name}")
        table = self.query_one("#events", DataTable)
        table.add_columns(
            "WHEN (UTC)", "WHAT", "CLUSTER", "REVISION", "AUTHOR", "SUBJECT", "WHY", "WHO",
            "MESSAGE",
        )  # fmt: skip
        table.focus()
        self.load()

    @work(exclusive=True)
    async def load(self) -> None:
        status = self.query_one("#history-status", Static)
        try:
            events = await self.fleet_app.client.history(app=self.app_name)
        except grpc.aio.AioRpcError as err:
            status.update(text.line("cannot load the history: ", err.details() or ""))
            return
        table = self.query_one("#events", DataTable)
        table.clear()
        self.revisions = {}
        for e in events:
            key = str(e.id)
            self.revisions[key] = e.revision
            table.add_row(
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at.seconds)),
                text.plain(e.kind),
                text.plain(e.cluster or "*"),
                text.plain(e.revision[:8] or "-"),
                text.plain(e.author or "-"),
                text.plain(e.subject or "-"),
                model.cause_name(e.cause),
                text.plain(e.actor),
                text.plain(e.message),
                key=key,
            )
        status.update(f"{len(events)} events, newest first; r rolls back to the selected revision")

    def action_rollback(self) -> None:
        table = self.query_one("#events", DataTable)
        if not table.row_count:
            return
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        revision = self.revisions.get(str(row_key.value), "")
        if not revision:
            self.notify("this event has no revision; pick another row", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.fleet_app.act("rollback", self.app_name, revision=revision)

        question = text.lines(
            [
                text.line(
                    "Roll back ",
                    (self.app_name, "bold"),
                    " to ",
                    (revision[:8], "bold"),
                    " on every cluster?",
                ),
                Text("Auto-sync holds this pin until you unpin (u)."),
            ]
        )
        self.app.push_screen(confirm.Confirm(question), answered)
