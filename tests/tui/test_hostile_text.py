"""The attack: a hub (a newer one, or one passing on what a lying agent, a hostile committer or
a careless operator wrote) sends Rich markup, terminal escapes, bidi overrides and enum values
this TUI does not know. Every screen shows the strings literally, sends no control character
and no hyperlink to the terminal, shows unknown values as Unknown, and nothing raises.

The hub is a FAKE client here (HostileHubClient): what is under test is what the TUI does with
what it is given; the hub's own validation is tested in tests/hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from fleetops.proto.v1 import fleet_pb2, types_pb2
from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui import model, text
from fleetops.tui.widgets.matrix import Matrix
from tests.tui import screen

SIZE = (200, 50)
NOW = 1_795_000_000  # 2026-11-18 11:06:40Z
REV = "\x1b[31mdeadbeefcafe"

REASON = "[/]x[bold]"
LINK = "\x1b[31m[link=file:///etc/passwd]"  # recolour, then a link to a local file
EDGE = "edge[/]1\u202e"  # markup and a right-to-left override in a cluster name
APP = "ops[/]"
LABEL = f"prod{LINK}"
AGENT_VERSION = f"1.0{LINK}"
KUBE_VERSION = "v1.37\x1b]0;pwned\x07"  # OSC 0: retitle the terminal window
FACT = "[bold red]eu[/]\x1b[5m"
RENDER_ERROR = "helm: [/] \x1b[31mboom\nline two [bold]"
EVENT_MESSAGE = "[bold red]rolled back[/] by [link=https://evil.example]x[/link] \x1b[2J"
ACTOR = "[/]alice\x1b[31m"
ANSWER = "[/]synced \x1b]0;pwned\x07"
# values no version of the enums has (yet): a newer hub, or a lying agent
UNKNOWN_SYNC = types_pb2.SyncStatus.ValueType(99)
UNKNOWN_HEALTH = types_pb2.HealthStatus.ValueType(42)
UNKNOWN_CONNECTIVITY = types_pb2.Connectivity.ValueType(7)
UNKNOWN_CAUSE = types_pb2.Cause.ValueType(13)


def hostile_fleet() -> fleet_pb2.Snapshot:
    snap = fleet_pb2.Snapshot(version=3)
    eu = snap.clusters.add(
        name="eu-1",
        connectivity=UNKNOWN_CONNECTIVITY,
        agent_version=AGENT_VERSION,
        kubernetes_version=KUBE_VERSION,
        reason=REASON,
        groups=["prod[/]"],
    )
    eu.labels["env"] = LABEL
    eu.agent_facts["agent.fleetops.io/region"] = FACT
    eu.certificate_expires.FromSeconds(NOW + 60 * 86400)
    snap.clusters.add(name=EDGE, connectivity=types_pb2.CONNECTIVITY_CONNECTED)
    app = snap.apps.add(
        name=APP, repo="plat[bold]form", path="apps/\x1b[2Jops", namespace="ops", head_revision=REV
    )
    app.targets.add(name="default", render_error=RENDER_ERROR)
    cell = snap.statuses.add(
        cluster="eu-1",
        app=APP,
        target="default[/]",
        desired_revision=REV,
        applied_revision=REV,
        sync=UNKNOWN_SYNC,
        health=UNKNOWN_HEALTH,
        reason=REASON,
    )
    odd = cell.resources.add(
        sync=UNKNOWN_SYNC,
        health=UNKNOWN_HEALTH,
        message="[link=file:///etc/passwd]x",
    )
    odd.ref.kind, odd.ref.namespace, odd.ref.name = "Deploy[/]ment", "ops", "web\x1b[31m"
    drifted = cell.resources.add(
        sync=types_pb2.SYNC_STATUS_OUT_OF_SYNC, health=types_pb2.HEALTH_STATUS_HEALTHY
    )
    drifted.ref.kind, drifted.ref.namespace, drifted.ref.name = "Deployment", "ops", "api"
    drifted.drift.add(
        path="spec.[/]replicas", desired="[link=file:///etc/passwd]2", live="\x1b[31m5"
    )
    snap.statuses.add(
        cluster=EDGE,
        app=APP,
        target="default",
        desired_revision="a" * 40,
        applied_revision="a" * 40,
        sync=types_pb2.SYNC_STATUS_SYNCED,
        health=types_pb2.HEALTH_STATUS_HEALTHY,
        reason="3 resources synced and healthy",
    )
    return snap


def hostile_event() -> types_pb2.Event:
    e = types_pb2.Event(
        id=1,
        app=APP,
        cluster="eu-1",
        revision="deadbeef" * 5,
        cause=UNKNOWN_CAUSE,
        actor=ACTOR,
        kind="applied[/]",
        message=EVENT_MESSAGE,
        author="[b]mallory[/b]\x1b[31m",  # a commit's author and subject are a committer's
        subject="[link=https://evil.example]fix[/link]\x1b[2J",
    )
    e.at.FromSeconds(NOW - 60)
    return e


def rpc_error(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=details,
        debug_error_string="",
    )


class HostileHubClient(tui_client.HubClient):
    """A FAKE hub client: serves the hostile fleet and its history, answers actions with a
    hostile message; `lose_with` breaks the stream after the snapshot with that error detail,
    `history_error` makes the history fail with it."""

    def __init__(self, *, lose_with: str = "", history_error: str = "") -> None:
        super().__init__(tui_client.Credentials("fake:0", b"", "fake"))
        self.lose_with = lose_with
        self.history_error = history_error
        self.watches = 0
        self.synced: list[str] = []

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        self.watches += 1
        if self.watches == 1:
            yield fleet_pb2.FleetChange(version=3, snapshot=hostile_fleet())
            yield fleet_pb2.FleetChange(version=4, event=hostile_event())
            if self.lose_with:
                raise rpc_error(self.lose_with)
        await asyncio.Event().wait()

    async def history(
        self, app: str = "", cluster: str = "", limit: int = 200
    ) -> list[types_pb2.Event]:
        if self.history_error:
            raise rpc_error(self.history_error)
        return [hostile_event()]

    async def sync(self, app: str, cluster: str = "") -> str:
        self.synced.append(app)
        return ANSWER

    async def close(self) -> None:
        pass


def hostile_app(**kwargs: str) -> tui_app.FleetApp:
    return tui_app.make_app(client=HostileHubClient(**kwargs), clock=lambda: float(NOW))


def shows_nothing_active(app: tui_app.FleetApp) -> screen.Terminal:
    """The screen as sent to the terminal, after checking it holds no control character and
    no hyperlink (what `[link=...]` would have become)."""
    shown = screen.terminal(app)
    assert shown.controls == [], f"control characters reached the terminal: {shown.controls}"
    assert shown.links == [], f"hyperlinks reached the terminal: {shown.links}"
    return shown


async def overview_ready(pilot: Pilot[None], app: tui_app.FleetApp) -> Matrix:
    table = app.screen.query_one("#matrix", Matrix)
    await screen.until(pilot, "the hostile fleet on screen", lambda: table.row_count == 2)
    return table


def rendered(app: tui_app.FleetApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def row(table: DataTable[object], index: int) -> list[str]:
    return [str(cell) for cell in table.get_row_at(index)]


# ------------------------------------------------------------------ the helper itself


def test_controls_become_visible_stand_ins() -> None:
    assert text.visible("a\x1b[31mb") == "a^[[31mb"
    assert text.visible("bell\x07 del\x7f nl\n tab\t") == "bell^G del^? nl^J tab^I"
    assert text.visible("csi\x9b2J") == "csi<U+009B>2J"  # C1: a one-byte CSI
    assert text.visible("\u202eprod") == "<U+202E>prod"  # bidi override
    assert text.visible("a\u200bb\u2028c") == "a<U+200B>b<U+2028>c"  # zero-width, line separator
    assert text.visible("[/]x[bold] 📌 ünïcode") == "[/]x[bold] 📌 ünïcode"  # markup stays text
    assert text.visible("x" * 5000, limit=10) == "xxxxxxxxxx… (4990 more characters)"


def test_built_texts_carry_no_markup_and_no_controls() -> None:
    shown = text.line("Sync ", (APP, "bold"), " ", LINK)
    assert shown.plain == "Sync ops[/] ^[[31m[link=file:///etc/passwd]"
    assert all(not span.style or "link" not in str(span.style) for span in shown.spans)
    assert text.plain(REASON).plain == REASON
    rows = text.paragraph("one\ntwo\x1b\nthree", first="error: ", most=2)
    assert [r.plain for r in rows] == ["error: one", "    two^[", "    … (1 more lines)"]
    assert text.lines([Text("a"), Text("b")]).plain == "a\nb"


# ------------------------------------------------------------------ every screen


async def test_the_overview_shows_names_revisions_and_unknown_states_literally() -> None:
    app = hostile_app()
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_ready(pilot, app)
        edge = text.visible(EDGE)
        assert edge == "edge[/]1<U+202E>"
        assert table.row_texts(EDGE)[0] == edge  # rows are keyed by the name as sent
        eu = table.row_texts("eu-1")
        assert eu[1] == "Unknown", "connectivity 7 is not a value this TUI knows"
        assert eu[3] == "Unknown Unknown ^[[31mde", "sync 99 / health 42, then the revision"
        shown = shows_nothing_active(app)
        assert "ops[/] 1/2" in shown.text  # the app's column
        assert edge in shown.text and "Unknown Unknown ^[[31mde" in shown.text
        # the operator's own filter text is shown literally too
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = "e[/]1"
        await screen.until(pilot, "the filter", lambda: table.row_count == 1)
        assert table.rows == [EDGE]
        assert "filter: e[/]1" in rendered(app, "#counts")
        shows_nothing_active(app)


async def test_the_app_screen_shows_reasons_resources_drift_and_errors_literally() -> None:
    app = hostile_app()
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_ready(pilot, app)
        table.focus()
        table.move_cursor(row=table.rows.index("eu-1"), column=3)
        await pilot.press("enter")
        await screen.until(pilot, "the app screen", lambda: bool(app.screen.query("#clusters")))
        clusters = app.screen.query_one("#clusters", DataTable)
        await screen.until(pilot, "two clusters", lambda: clusters.row_count == 2)
        clusters.move_cursor(row=1)  # eu-1 (edge[/]1 sorts first)
        await pilot.pause()
        assert row(clusters, 1) == [
            "eu-1",
            "default[/]",
            "^[[31mde",
            "^[[31mde",
            "Unknown",
            "Unknown",
            "agent offline",
            REASON,
        ]
        summary = rendered(app, "#summary")
        assert summary.startswith("plat[bold]form:apps/^[[2Jops → namespace ops")
        assert "\nrender error default: helm: [/] ^[[31mboom\n    line two [bold]" in summary
        resources = app.screen.query_one("#resources", DataTable)
        assert row(resources, 0) == [
            "Deploy[/]ment",
            "ops/web^[[31m",
            "Unknown",
            "Unknown",
            "[link=file:///etc/passwd]x",
        ]
        resources.move_cursor(row=1)
        drift = app.screen.query_one("#drift", Static)
        await screen.until(pilot, "the drift", lambda: drift.display)
        assert str(drift.render()).splitlines()[1:] == [
            "  spec.[/]replicas",
            "  - live  ^[[31m5",
            "  + git   [link=file:///etc/passwd]2",
        ]
        shown = shows_nothing_active(app)
        assert REASON in shown.text and "app ops[/]" in shown.text  # the cell and the title
        assert "  + git   [link=file:///etc/passwd]2" in shown.text


async def test_the_cluster_screen_shows_labels_apart_from_what_the_agent_says() -> None:
    app = hostile_app()
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_ready(pilot, app)
        table.move_cursor(row=table.rows.index("eu-1"), column=0)
        await pilot.press("c")
        await screen.until(
            pilot, "the cluster screen", lambda: bool(app.screen.query("#agent-says"))
        )
        info = rendered(app, "#cluster-info").splitlines()
        says = rendered(app, "#agent-says").splitlines()
        assert info[0] == "Unknown (last seen never): [/]x[bold]"
        assert info[1] == "certificate valid until 2027-01-17 11:06:40Z (60 days left)"
        assert info[2].startswith("labels env=prod^[[31m[link=file:///etc/passwd]   (the hub's")
        assert info[3] == "groups prod[/]"
        assert says[0].startswith("agent says")
        assert (
            says[1] == "  agent 1.0^[[31m[link=file:///etc/passwd]   Kubernetes v1.37^[]0;pwned^G"
        )
        assert says[2] == "  facts agent.fleetops.io/region=[bold red]eu[/]^[[5m"
        assert "region" not in "\n".join(info), "a fact is not a label"
        apps = app.screen.query_one("#cluster-apps", DataTable)
        assert row(apps, 0) == [
            "ops[/]",
            "default[/]",
            "^[[31mde",
            "^[[31mde",
            "Unknown",
            "Unknown",
            REASON,
        ]
        shown = shows_nothing_active(app)
        assert "cluster eu-1" in shown.text and "[bold red]eu[/]^[[5m" in shown.text


async def test_the_history_shows_messages_actors_and_commit_text_literally() -> None:
    app = hostile_app()
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_ready(pilot, app)
        table.move_cursor(row=0, column=3)
        await pilot.press("h")
        await screen.until(pilot, "the history screen", lambda: bool(app.screen.query("#events")))
        events = app.screen.query_one("#events", DataTable)
        await screen.until(pilot, "the event", lambda: events.row_count == 1)
        assert row(events, 0)[1:] == [
            "applied[/]",
            "eu-1",
            "deadbeef",
            "[b]mallory[/b]^[[31m",
            "[link=https://evil.example]fix[/link]^[[2J",
            "Unknown",  # cause 13
            "[/]alice^[[31m",
            "[bold red]rolled back[/] by [link=https://evil.example]x[/link] ^[[2J",
        ]
        shown = shows_nothing_active(app)
        assert "history of ops[/]" in shown.text
        await pilot.press("r")  # roll back: the question names the app and revision literally
        await screen.until(pilot, "the question", lambda: bool(app.screen.query("#question")))
        assert rendered(app, "#question").startswith("Roll back ops[/] to deadbeef on every")
        shows_nothing_active(app)


async def test_a_failed_history_says_why_literally() -> None:
    app = hostile_app(history_error="[/]no \x1b[31mhistory")
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_ready(pilot, app)
        table.move_cursor(row=0, column=3)
        await pilot.press("h")
        await screen.until(
            pilot,
            "the error",
            lambda: (
                bool(app.screen.query("#history-status"))
                and "cannot" in rendered(app, "#history-status")
            ),
        )
        assert rendered(app, "#history-status") == "cannot load the history: [/]no ^[[31mhistory"
        shows_nothing_active(app)


async def test_the_question_and_the_hubs_answer_are_shown_literally() -> None:
    app = hostile_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        table = await overview_ready(pilot, app)
        table.focus()
        table.move_cursor(row=0, column=3)
        await pilot.press("s")
        await screen.until(pilot, "the question", lambda: bool(app.screen.query("#question")))
        assert rendered(app, "#question") == "Sync ops[/] on every cluster now?"
        shows_nothing_active(app)
        await pilot.press("y")
        await screen.until(
            pilot, "the answer", lambda: "[/]synced ^[]0;pwned^G" in screen.terminal(app).text
        )
        assert app.client.synced == [APP]  # type: ignore[attr-defined]
        shows_nothing_active(app)


async def test_a_lost_connection_shows_the_hubs_error_literally() -> None:
    app = hostile_app(lose_with="[/]gone \x1b[2J")
    async with app.run_test(size=SIZE) as pilot:
        await screen.until(
            pilot, "the lost connection", lambda: "connection lost" in rendered(app, "#connection")
        )
        assert rendered(app, "#connection").startswith(
            "connection lost (UNAVAILABLE: [/]gone ^[[2J); data is stale since"
        )
        shows_nothing_active(app)


async def test_help_opens_over_a_hostile_fleet() -> None:
    app = hostile_app()
    async with app.run_test(size=SIZE) as pilot:
        await overview_ready(pilot, app)
        await pilot.press("question_mark")
        await screen.until(pilot, "help", lambda: app.screen.__class__.__name__ == "Help")
        assert "fleetops: clusters down, apps across" in shows_nothing_active(app).text


def test_unknown_enum_values_are_unknown_in_the_model() -> None:
    cell = fleet_pb2.ClusterAppStatus(sync=UNKNOWN_SYNC, health=UNKNOWN_HEALTH)
    assert model.cell_text(cell) == "Unknown Unknown -"
    assert model.cell_text(cell, compact=True) == "?/? -"
    assert model.level(cell) == model.WARN, "a state nobody can read needs a look"
    assert model.connectivity_name(UNKNOWN_CONNECTIVITY) == "Unknown"
    assert model.cause_name(UNKNOWN_CAUSE) == "Unknown"
    assert model.cause_name(types_pb2.CAUSE_ROLLBACK) == "rollback"


def test_the_app_screen_as_the_terminal_shows_it(snap_compare: Any) -> None:
    """Looked at: the placeholders (^[, <U+202E>) and the literal brackets are what an
    operator sees, in the normal layout."""

    async def open_the_drift(pilot: Pilot[Any]) -> None:
        table = await overview_ready(pilot, cast(tui_app.FleetApp, pilot.app))
        table.move_cursor(row=table.rows.index("eu-1"), column=3)
        await pilot.press("enter")
        await screen.until(
            pilot, "the app screen", lambda: bool(pilot.app.screen.query("#clusters"))
        )
        clusters = pilot.app.screen.query_one("#clusters", DataTable)
        clusters.move_cursor(row=1)
        second = str(clusters.get_row_at(1)[0])
        await screen.until(
            pilot,
            f"the resources of {second}",
            lambda: str(pilot.app.screen.query_one("#resources-title", Static).render()).endswith(
                second
            ),
        )
        pilot.app.screen.query_one("#resources", DataTable).move_cursor(row=1)
        await screen.until(
            pilot, "the drift box", lambda: pilot.app.screen.query_one("#drift", Static).display
        )
        await pilot.pause()

    assert snap_compare(hostile_app(), terminal_size=(140, 30), run_before=open_the_drift)
