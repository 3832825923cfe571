"""The app screen's resources table uses the width it has (issue 16): kind and object are
readable at 100 columns, right under the clusters table, the HOOK column only when there are
hooks, a name too long for the screen cut in the middle with an ellipsis, the message taking
the rest. From a FAKE hub client serving a fixed fleet (the table is what this is about)."""

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
LONG = "payments-settlement-reconciler-with-a-very-long-generated-name-7f9c"
RESOURCES = (
    ("HorizontalPodAutoscaler", "api", "scaled to 3 replicas"),
    ("Deployment", "payments-api", "3 of 3 replicas available"),
    ("ConfigMap", LONG, "exists"),
)


def fleet() -> fleet_pb2.Snapshot:
    snap = fleet_pb2.Snapshot(version=1)
    snap.clusters.add(name="eu-1", connectivity=1, agent_version="0.1.0")
    snap.apps.add(name="payments", repo="platform", path="apps/payments", namespace="payments")
    cell = snap.statuses.add(
        cluster="eu-1",
        app="payments",
        target="default",
        desired_revision="a" * 40,
        applied_revision="a" * 40,
        sync=SYNCED,
        health=HEALTHY,
        reason="3 resources synced and healthy",
    )
    for kind, name, message in RESOURCES:
        r = cell.resources.add(sync=SYNCED, health=HEALTHY, message=message)
        r.ref.kind, r.ref.namespace, r.ref.name = kind, "payments", name
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


async def app_screen(size: tuple[int, int]) -> list[str]:
    """The app screen as the terminal shows it at `size`, once the resources are in."""
    app = tui_app.make_app(client=FakeHubClient())
    async with app.run_test(size=size) as pilot:
        await screen.until(
            pilot,
            "the fleet in the matrix",
            lambda: (
                app.screen.query("#matrix") and app.screen.query_one("#matrix", Matrix).row_count
            ),
        )
        app.screen.query_one("#matrix", Matrix).move_cursor(row=0, column=3)
        await pilot.press("enter")
        await screen.until(
            pilot,
            "the resources on the app screen",
            lambda: (
                bool(app.screen.query("#resources"))
                and app.screen.query_one("#resources", DataTable).row_count == len(RESOURCES)
            ),
        )
        await pilot.pause()
        return screen.terminal(app).lines


def resource_rows(lines: list[str]) -> tuple[int, list[str]]:
    """Where the resources table's header is, and its rows."""
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("KIND "))
    return at, lines[at + 1 : at + 1 + len(RESOURCES)]


async def test_kind_and_object_are_readable_at_100_columns() -> None:
    lines = await app_screen((100, 30))
    at, rows = resource_rows(lines)
    assert lines[at].split() == ["KIND", "OBJECT", "SYNC", "HEALTH", "MESSAGE", "/", "DRIFT"], (
        "no HOOK column without hooks"
    )
    hpa, deploy, config = rows
    assert hpa.split()[:2] == ["HorizontalPodAutoscaler", "payments/api"]
    assert deploy.split()[:2] == ["Deployment", "payments/payments-api"]
    assert "scaled to 3 replicas" in hpa and "3 of 3 replicas available" in deploy
    # the long name: cut in the middle, keeping the namespace's start and the name's end
    shown = config.split()[1]
    assert "…" in shown and shown.startswith("payments/") and shown.endswith("-7f9c")
    assert "exists" in config, "the message column was pushed off the screen"
    # right under the clusters table and its title: no empty gap above
    cluster_row = next(i for i, line in enumerate(lines) if line.lstrip().startswith("eu-1 "))
    between = [line for line in lines[cluster_row + 1 : at] if line.strip()]
    assert len(between) == 1 and "resources on eu-1" in between[0]


async def test_a_wider_screen_shows_more_of_a_long_name() -> None:
    narrow = await app_screen((100, 30))
    wide = await app_screen((140, 40))
    (_, (_, _, at_100)), (_, (_, _, at_140)) = resource_rows(narrow), resource_rows(wide)
    shown_100, shown_140 = at_100.split()[1], at_140.split()[1]
    assert len(shown_140) > len(shown_100)
    assert shown_140.startswith("payments/") and shown_140.endswith("-generated-name-7f9c")
    assert at_140.rstrip().endswith("exists"), "the message column was pushed off the screen"


async def test_at_80_columns_every_column_is_still_there() -> None:
    lines = await app_screen((80, 24))
    at, (hpa, deploy, config) = resource_rows(lines)
    assert lines[at].split()[:4] == ["KIND", "OBJECT", "SYNC", "HEALTH"]
    kind, shown = deploy.split()[:2]
    assert kind == "Deployment" and shown.startswith("payments/") and shown.endswith("ments-api")
    assert all("Synced" in row and "Healthy" in row for row in (hpa, deploy, config))
    assert all(len(row) <= 80 for row in (hpa, deploy, config))


async def test_a_resize_refits_the_columns_and_keeps_the_selected_resource() -> None:
    app = tui_app.make_app(client=FakeHubClient())
    async with app.run_test(size=(100, 30)) as pilot:
        await screen.until(
            pilot,
            "the fleet in the matrix",
            lambda: (
                app.screen.query("#matrix") and app.screen.query_one("#matrix", Matrix).row_count
            ),
        )
        app.screen.query_one("#matrix", Matrix).move_cursor(row=0, column=3)
        await pilot.press("enter")
        await screen.until(
            pilot,
            "the resources on the app screen",
            lambda: (
                bool(app.screen.query("#resources"))
                and app.screen.query_one("#resources", DataTable).row_count == len(RESOURCES)
            ),
        )
        table = app.screen.query_one("#resources", DataTable)
        table.focus()
        await pilot.press("down", "down")
        await screen.until(pilot, "the third resource selected", lambda: table.cursor_row == 2)
        await pilot.resize_terminal(140, 40)

        def long_name_shown() -> str:
            _, rows = resource_rows(screen.terminal(app).lines)
            return rows[2].split()[1]

        await screen.until(
            pilot, "the long name refitted to 140 columns", lambda: len(long_name_shown()) > 40
        )
        assert table.cursor_row == 2, "the resize lost the selected resource"
