"""Layout snapshots of the TUI at a fixed size, from a FAKE hub client serving a fixed fleet
(layout is what these tests are about; the live hub is covered in test_overview.py).
The SVGs in __snapshots__ were looked at before they were committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from fleetops.proto.v1 import fleet_pb2, types_pb2
from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui.widgets.matrix import Matrix
from tests.tui import screen

REV_A = "4f2b9c1e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c"
REV_B = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d"
LOST_AT = 1_795_000_000  # 2026-11-18 11:06:40Z: a fixed clock, so the stale stamp is stable


def fleet_snapshot() -> fleet_pb2.Snapshot:
    snap = fleet_pb2.Snapshot(version=7)
    for name, env, conn in (
        ("eu-prod-1", "prod", 1),
        ("eu-prod-2", "prod", 1),
        ("us-dev-1", "dev", 2),
    ):
        c = snap.clusters.add(
            name=name, connectivity=conn, agent_version="0.1.0", kubernetes_version="v1.37.2"
        )
        c.labels["env"] = env
        c.labels["fleetops.io/cluster"] = name
        c.groups.append(env)
        c.last_seen.FromSeconds(LOST_AT - (600 if conn == 2 else 5))
        # what the agent says about itself: shown on the cluster screen, never matched
        c.agent_facts["agent.fleetops.io/node-pool"] = "general"
        c.agent_facts["agent.fleetops.io/region"] = name.split("-")[0] + "-west-1"
        c.certificate_expires.FromSeconds(LOST_AT + 59 * 86400 + 3600)
    for app in ("guestbook", "payments"):
        snap.apps.add(
            name=app, repo="platform", path=f"apps/{app}", namespace=app, head_revision=REV_B
        )
    synced, healthy = types_pb2.SYNC_STATUS_SYNCED, types_pb2.HEALTH_STATUS_HEALTHY
    rows = [
        ("eu-prod-1", "guestbook", REV_B, REV_B, synced, healthy, "3 resources synced and healthy"),
        (
            "eu-prod-2",
            "guestbook",
            REV_B,
            REV_A,
            types_pb2.SYNC_STATUS_PENDING,
            healthy,
            "delivered 9e8d7c6b; waiting for the agent to apply it",
        ),
        (
            "us-dev-1",
            "guestbook",
            REV_B,
            REV_B,
            types_pb2.SYNC_STATUS_OUT_OF_SYNC,
            healthy,
            "Deployment guestbook/web: drifted: spec.replicas",
        ),
        (
            "eu-prod-1",
            "payments",
            REV_B,
            REV_B,
            synced,
            types_pb2.HEALTH_STATUS_DEGRADED,
            "Deployment payments/api: rollout stuck: ProgressDeadlineExceeded",
        ),
        (
            "eu-prod-2",
            "payments",
            REV_B,
            REV_B,
            synced,
            types_pb2.HEALTH_STATUS_PROGRESSING,
            "Deployment payments/api: 1 of 3 replicas updated",
        ),
        (
            "us-dev-1",
            "payments",
            REV_B,
            REV_B,
            types_pb2.SYNC_STATUS_APPLY_FAILED,
            types_pb2.HEALTH_STATUS_UNKNOWN,
            "ConfigMap payments/settings: .dataa: field not declared in schema",
        ),
    ]
    for cluster, app, desired, applied, sync, health, reason in rows:
        cell = snap.statuses.add(
            cluster=cluster,
            app=app,
            target="default",
            desired_revision=desired,
            applied_revision=applied,
            sync=sync,
            health=health,
            reason=reason,
        )
        if (cluster, app) == ("us-dev-1", "guestbook"):
            r = cell.resources.add(sync=types_pb2.SYNC_STATUS_OUT_OF_SYNC, health=healthy)
            r.ref.kind, r.ref.namespace, r.ref.name = "Deployment", "guestbook", "web"
            r.drift.add(path="spec.replicas", desired="2", live="5")
            ok = cell.resources.add(sync=synced, health=healthy, message="exists")
            ok.ref.kind, ok.ref.namespace, ok.ref.name = "Service", "guestbook", "web"
    return snap


class FakeHubClient(tui_client.HubClient):
    """A fake: serves one fixed snapshot and accepts actions without a hub."""

    def __init__(self) -> None:
        super().__init__(tui_client.Credentials("fake:0", b"", "fake-token"))

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        yield fleet_pb2.FleetChange(version=7, snapshot=fleet_snapshot())
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


def app() -> tui_app.FleetApp:
    return tui_app.make_app(client=FakeHubClient())


async def settled(pilot: Pilot[Any]) -> None:
    await screen.until(
        pilot,
        "the fleet in the matrix",
        lambda: (
            pilot.app.screen.query("#matrix")
            and pilot.app.screen.query_one("#matrix", Matrix).row_count
        ),
    )
    await pilot.pause()


def resources_title(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#resources-title", Static).render())


def test_overview(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=(120, 24), run_before=settled)


def test_overview_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=(80, 24), run_before=settled)


def test_app_detail_with_a_drift(snap_compare: Any) -> None:
    async def open_guestbook(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        table = pilot.app.screen.query_one("#matrix", Matrix)
        table.move_cursor(row=2, column=3)  # us-dev-1 / guestbook
        await pilot.press("enter")
        await screen.until(
            pilot,
            "guestbook's clusters",
            lambda: (
                pilot.app.screen.query("#clusters")
                and pilot.app.screen.query_one("#clusters", DataTable).row_count > 2
            ),
        )
        clusters = pilot.app.screen.query_one("#clusters", DataTable)
        clusters.move_cursor(row=2)
        third = str(clusters.get_row_at(2)[0])
        await screen.until(
            pilot, f"the resources of {third}", lambda: resources_title(pilot).endswith(third)
        )
        await pilot.pause()

    assert snap_compare(app(), terminal_size=(140, 30), run_before=open_guestbook)


def test_cluster_detail_shows_what_the_agent_says_apart_from_labels(snap_compare: Any) -> None:
    async def open_eu_prod_1(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        pilot.app.screen.query_one("#matrix", Matrix).move_cursor(row=0, column=0)
        await pilot.press("c")
        await screen.until(
            pilot,
            "eu-prod-1's cluster screen",
            lambda: (
                pilot.app.screen.query("#cluster-info")
                and "last seen" in str(pilot.app.screen.query_one("#cluster-info", Static).render())
            ),
        )
        await pilot.pause()

    fixed = tui_app.make_app(client=FakeHubClient(), clock=lambda: float(LOST_AT))
    assert snap_compare(fixed, terminal_size=(120, 24), run_before=open_eu_prod_1)


class LostHubClient(FakeHubClient):
    """A fake: the fixed fleet, then the stream breaks; the retry hangs (a hub that does not
    answer), so the screen stays on the first "retrying in 1 s"."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()
        yield fleet_pb2.FleetChange(version=7, snapshot=fleet_snapshot())
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="failed to connect to all addresses",
        )


def test_disconnected_hub_marks_the_data_stale(snap_compare: Any) -> None:
    async def lose_the_hub(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await screen.until(
            pilot,
            "the connection line saying the connection was lost",
            lambda: "connection lost" in str(pilot.app.screen.query_one("#connection").render()),
        )
        await pilot.pause()

    lost = tui_app.make_app(client=LostHubClient(), clock=lambda: float(LOST_AT))
    assert snap_compare(lost, terminal_size=(120, 24), run_before=lose_the_hub)


class ChangingHubClient(FakeHubClient):
    """A fake: the fixed fleet, then eu-prod-1/guestbook turns Degraded."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        yield fleet_pb2.FleetChange(version=7, snapshot=fleet_snapshot())
        await self.go.wait()
        cell = fleet_pb2.ClusterAppStatus(
            cluster="eu-prod-1",
            app="guestbook",
            target="default",
            desired_revision=REV_B,
            applied_revision=REV_B,
            sync=types_pb2.SYNC_STATUS_SYNCED,
            health=types_pb2.HEALTH_STATUS_DEGRADED,
            reason="crash looping",
        )
        yield fleet_pb2.FleetChange(version=8, status=cell)
        await asyncio.Event().wait()


async def test_a_changed_cell_is_repainted() -> None:
    """The matrix keeps each row's rendered line; a changed cell must drop its row's line
    (and the column's header count), or the screen would silently show stale cells."""
    fake = ChangingHubClient()
    app = tui_app.make_app(client=fake)
    async with app.run_test(size=(120, 24)) as pilot:
        await settled(pilot)
        first = app.export_screenshot().replace("&#160;", " ")
        assert "Synced Healthy 9e8d7c6" in first and "guestbook 1/3" in first
        fake.go.set()

        def screenshot() -> str:
            return app.export_screenshot().replace("&#160;", " ")

        await screen.until(
            pilot,
            "the changed cell repainted",
            lambda: screenshot().count("Synced Degraded 9e8d7c6") == 2,
        )
        shot = screenshot()
        assert shot.count("Synced Degraded 9e8d7c6") == 2, "the changed cell was not repainted"
        assert "Synced Healthy 9e8d7c6" not in shot
        assert "guestbook 0/3" in shot, "the column's count did not follow"
