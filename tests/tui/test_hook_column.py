"""The app screen's resources table names each sync hook's phases (issue 13), from a FAKE hub
client serving a fixed fleet (the table is what this test is about, not the hub)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from textual.widgets import DataTable

from fleetops.proto.v1 import fleet_pb2, types_pb2
from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui.widgets.matrix import Matrix
from tests.tui import screen

SYNCED, HEALTHY = types_pb2.SYNC_STATUS_SYNCED, types_pb2.HEALTH_STATUS_HEALTHY


def fleet() -> fleet_pb2.Snapshot:
    snap = fleet_pb2.Snapshot(version=1)
    snap.clusters.add(name="eu-1", connectivity=1, agent_version="0.1.0")
    snap.apps.add(name="shop", repo="platform", path="apps/shop", namespace="shop")
    cell = snap.statuses.add(
        cluster="eu-1",
        app="shop",
        target="default",
        desired_revision="a" * 40,
        applied_revision="a" * 40,
        sync=SYNCED,
        health=HEALTHY,
        reason="3 resources synced and healthy",
    )
    for kind, name, hook, message in (
        ("Job", "migrate", "PreSync", "PreSync hook succeeded: the job completed"),
        ("Deployment", "web", "", "3 of 3 replicas available"),
        ("Pod", "web-test", "(none)", "hook not applied on sync: Helm test hooks ..."),
    ):
        r = cell.resources.add(sync=SYNCED, health=HEALTHY, message=message, hook=hook)
        r.ref.kind, r.ref.namespace, r.ref.name = kind, "shop", name
    return snap


class FakeHubClient(tui_client.HubClient):
    """A fake: serves one fixed snapshot without a hub."""

    def __init__(self) -> None:
        super().__init__(tui_client.Credentials("fake:0", b"", "fake-token"))

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        yield fleet_pb2.FleetChange(version=1, snapshot=fleet())
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


async def test_the_resources_table_shows_each_hooks_phase() -> None:
    app = tui_app.make_app(client=FakeHubClient())
    async with app.run_test(size=(140, 30)) as pilot:
        await screen.until(
            pilot,
            "the fleet in the matrix",
            lambda: (
                app.screen.query("#matrix") and app.screen.query_one("#matrix", Matrix).row_count
            ),
        )
        matrix = app.screen.query_one("#matrix", Matrix)
        matrix.focus()
        matrix.move_cursor(row=0, column=3)
        await pilot.press("enter")
        await screen.until(pilot, "the app screen", lambda: bool(app.screen.query("#resources")))
        table = app.screen.query_one("#resources", DataTable)
        await screen.until(pilot, "the resources", lambda: table.row_count == 3)
        headers = [str(c.label) for c in table.columns.values()]
        assert headers[:3] == ["KIND", "OBJECT", "HOOK"]
        rows = [[str(v) for v in table.get_row_at(i)] for i in range(3)]
        assert [(r[0], r[2]) for r in rows] == [
            ("Job", "PreSync"),
            ("Deployment", ""),
            ("Pod", "(none)"),
        ]
