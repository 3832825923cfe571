"""One app's progressive rollout: its steps (phase, passed/total, bake, gates), the clusters of
each step with their state (Waiting, Progressing, Baking 4m12s left, Passed, Failed,
Deferred), gate values with their thresholds and the reason; and the operator's keys to
promote, pause, resume, abort and retry it (abort and retry ask first).

It polls RolloutStatus every second in a worker, never on the UI thread. Every string from the
hub (names, reasons, gate messages, commit subjects) goes through `tui.text`, so it is shown
literally. What an action does is the hub's to decide: this screen only asks."""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import grpc
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from fleetops.proto import rollouttext
from fleetops.proto.v1 import fleet_pb2
from fleetops.tui import model, text
from fleetops.tui.screens import base, confirm

POLL = 1.0  # seconds between RolloutStatus calls while the screen is shown
MUTED = "grey50"


class RolloutSource(Protocol):
    """Where the screen reads the rollout (the hub client in the app)."""

    async def rollout_status(self, app: str = "") -> list[fleet_pb2.Rollout]: ...


def _style(phase: str) -> str:
    lvl = model.rollout_level(phase)
    return MUTED if lvl is None else model.LEVEL_STYLE[lvl]


class RolloutScreen(base.FleetScreen):
    CSS = """
    RolloutScreen #steps {
        height: auto;
        max-height: 40%;
    }
    RolloutScreen #rollout-clusters {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("g", "promote", "promote step"),
        Binding("p", "pause_resume", "pause/resume"),
        Binding("a", "abort", "abort"),
        Binding("r", "retry", "retry"),
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, app_name: str) -> None:
        super().__init__()
        self.app_name = app_name
        self.rollout: fleet_pb2.Rollout | None = None
        self.problem = ""  # why the last poll brought nothing ('' when it did)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("asking the hub…", id="rollout-summary")
        yield DataTable(id="steps", cursor_type="none", zebra_stripes=True)
        yield DataTable(id="rollout-clusters", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.title = text.visible(f"rollout of {self.app_name}")
        self.query_one("#rollout-clusters", DataTable).focus()
        self.poll()

    @property
    def source(self) -> RolloutSource:
        # the app's client is a tui.client.HubClient, which has rollout_status
        return cast(RolloutSource, self.fleet_app.client)

    @work(exclusive=True, group="rollout-poll")
    async def poll(self) -> None:
        while True:
            await self.load()
            await asyncio.sleep(POLL)  # not a wait for state: the polling period

    async def load(self) -> None:
        """One RolloutStatus call, painted."""
        try:
            found = await self.source.rollout_status(self.app_name)
        except grpc.aio.AioRpcError as e:
            gone = e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
            if gone:  # no such app, or no rollout policy: nothing to show but the reason
                self.rollout = None
            self.problem = e.details() or e.code().name
            self.paint()
            return
        self.rollout = found[0] if found else None
        self.problem = "" if found else f"the hub sent no rollout for {self.app_name}"
        self.paint()

    # ------------------------------------------------------------ painting

    def paint(self) -> None:
        summary = self.query_one("#rollout-summary", Static)
        steps = self.query_one("#steps", DataTable)
        clusters = self.query_one("#rollout-clusters", DataTable)
        r = self.rollout
        rows: list[Text] = []
        if self.problem:
            rows.append(text.line((self.problem, "bold dark_orange")))
        if r is None:
            summary.update(text.lines(rows))
            steps.clear(columns=True)
            clusters.clear(columns=True)
            return
        rows += self._summary(r)
        summary.update(text.lines(rows))
        self._paint_steps(r, steps)
        self._paint_clusters(r, clusters)

    def _summary(self, r: fleet_pb2.Rollout) -> list[Text]:
        subject = f' "{r.subject}"' if r.subject else ""
        head = text.line(
            (r.app, "bold"),
            "  ",
            model.short(r.revision) if r.revision else "",
            subject,
            "  ",
            (model.rollout_where(r), _style(r.phase)),
        )
        rows = [head]
        if r.reason:
            rows += text.paragraph(r.reason, first="why: ", most=3)
        for revision, why in sorted(r.rejected.items()):
            rows.append(text.line(("rejected ", "bold red"), model.short(revision), ": ", why))
        if r.stable_revision:
            rows.append(
                text.line(
                    "stable ",
                    model.short(r.stable_revision),
                    (" (the last revision that passed every step)", MUTED),
                )
            )
        return rows

    def _paint_steps(self, r: fleet_pb2.Rollout, table: DataTable[Text]) -> None:
        table.clear(columns=True)
        table.add_columns("STEP", "PHASE", "PASSED", "FAILED", "DEFERRED", "PARALLEL", "BAKE",
                          "GATES")  # fmt: skip
        for s in r.steps:
            table.add_row(
                text.plain(s.name, "bold" if s.phase == "Running" else ""),
                text.plain(s.phase + (" (promoted)" if s.promoted else ""), _style(s.phase)),
                text.plain(f"{s.passed}/{s.clusters}"),
                text.plain(str(s.failed), "bold red" if s.failed else ""),
                text.plain(str(s.deferred), "dark_orange" if s.deferred else ""),
                text.plain(str(s.max_parallel)),
                text.plain(rollouttext.span(s.bake_seconds) if s.bake_seconds else "-"),
                text.plain(", ".join(["health", *s.gates])),
                key=s.name,
            )

    def _paint_clusters(self, r: fleet_pb2.Rollout, table: DataTable[Text]) -> None:
        selected = table.cursor_row
        table.clear(columns=True)
        table.add_columns("STEP", "CLUSTER", "STATE", "GATES", "REASON")
        order = {s.name: i for i, s in enumerate(r.steps)}
        members = sorted(r.clusters, key=lambda c: (order.get(c.step, len(order)), c.cluster))
        shown = None
        for c in members:
            step = c.step or "(excluded)"
            table.add_row(
                text.plain(step if step != shown else "", "bold"),
                text.plain(c.cluster),
                text.plain(model.rollout_cluster_state(c), _style(c.phase)),
                text.plain("; ".join(rollouttext.gate_reading(g) for g in c.gates) or "-"),
                text.plain(c.reason),
                key=c.cluster,
            )
            shown = step
        if members:
            table.move_cursor(row=min(max(selected, 0), len(members) - 1))

    # ------------------------------------------------------------ the operator's keys

    def _current(self) -> fleet_pb2.Rollout | None:
        r = self.rollout
        if r is None:
            self.notify(
                text.visible(self.problem or "no rollout to act on"),
                severity="warning",
                markup=False,
            )
        return r

    def _act(self, action: str) -> None:
        self.refresh_after(self.fleet_app.act(f"rollout {action}", self.app_name))

    @work(group="rollout-after")
    async def refresh_after(self, worker: Worker[None]) -> None:
        """Show what an action did as soon as the hub answered, not at the next poll."""
        try:
            await worker.wait()
        except (WorkerCancelled, WorkerFailed):
            return
        await self.load()

    def action_promote(self) -> None:
        if self._current() is not None:
            self._act("promote")

    def action_pause_resume(self) -> None:
        r = self._current()
        if r is not None:
            self._act("resume" if r.phase == "Paused" else "pause")

    def action_abort(self) -> None:
        r = self._current()
        if r is None:
            return
        question = text.lines(
            [
                text.line(
                    "Abort the rollout of ",
                    (self.app_name, "bold"),
                    " ",
                    (model.short(r.revision), "bold"),
                    "?",
                ),
                Text("Every cluster that took it goes back to its last good revision."),
            ]
        )
        self._ask(question, "abort")

    def action_retry(self) -> None:
        r = self._current()
        if r is None:
            return
        rejected = ", ".join(model.short(rev) for rev in sorted(r.rejected)) or "none"
        question = text.lines(
            [
                text.line("Retry the rollout of ", (self.app_name, "bold"), "?"),
                text.line(
                    "Rejected revisions (",
                    rejected,
                    ") are forgotten and the newest rolls out again from the first step.",
                ),
            ]
        )
        self._ask(question, "retry")

    def _ask(self, question: Text, action: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._act(action)

        self.app.push_screen(confirm.Confirm(question), answered)
