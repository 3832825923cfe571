"""The TUI against a real in-process hub: a Git repo, two apps, and FAKE agents (real gRPC
clients with in-memory clusters, see tests/support/fakes.py) reporting healthy and degraded."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui.widgets.matrix import Matrix
from tests.support import fakes, fleet, hubproc, wait

SIZE = (120, 30)


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[hubproc.HubProc]:
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write(
        "apps/web/cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}}
    )
    repo.write(
        "apps/api/cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "api"}}
    )
    repo.commit("first")
    config = {
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1s"}],
        "clusters": [
            {"name": "eu-1", "labels": {"env": "prod"}},
            {"name": "us-1", "labels": {"env": "dev"}},
        ],
        "clusterGroups": [{"name": "production", "selector": {"matchLabels": {"env": "prod"}}}],
        "apps": [
            {"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web"},
            {
                "name": "api",
                "repo": "platform",
                "path": "apps/api",
                "namespace": "api",
                "sync": {"auto": False},
            },
        ],
    }
    agents: list[asyncio.Task[None]] = []
    async with hubproc.running(tmp_path / "hub", config, tools=hubproc.tools()) as proc:
        try:
            async with grpc.aio.secure_channel(
                proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
            ) as ch:
                for fake in (
                    fakes.FakeAgent("eu-1"),
                    fakes.FakeAgent(
                        "us-1",
                        health=types_pb2.HEALTH_STATUS_DEGRADED,
                        reason="Deployment web/web: rollout stuck",
                    ),
                ):
                    resp = await agent_pb2_grpc.AgentServiceStub(ch).Register(
                        agent_pb2.RegisterRequest(
                            token=await proc.token(fake.name), csr_pem=fake.csr()
                        )
                    )
                    fake.cert = resp.certificate_pem
                    run = fake.run(proc.agent_address, proc.ca_pem, asyncio.Event())
                    agents.append(asyncio.create_task(run))
            yield proc
        finally:
            for t in agents:
                t.cancel()
            await asyncio.gather(*agents, return_exceptions=True)


def client_for(hub: hubproc.HubProc, role: str = "operator") -> tui_client.HubClient:
    creds = tui_client.Credentials(hub.address, hub.ca_pem, hub.running.tokens[role])
    return tui_client.HubClient(creds)


async def until(
    pilot: Pilot[Any], what: str, check: Callable[[], bool], within: float = 15.0
) -> None:
    """`wait.until`, pausing through the pilot; on failure it shows the matrix."""

    def shown() -> str:
        app = pilot.app
        return str(matrix_text(app) if app.screen.query("#matrix") else type(app.screen).__name__)

    await wait.until(what, check, within=within, every=0.1, pause=pilot.pause, explain=shown)


def matrix_text(app: tui_app.FleetApp) -> dict[str, list[str]]:
    table = app.screen.query_one("#matrix", Matrix)
    return {row: table.row_texts(row) for row in table.rows}


async def test_the_overview_shows_every_cluster_and_app_with_their_state(
    hub: hubproc.HubProc,
) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot,
            "both clusters reporting web",
            lambda: sum("Synced" in r[4] for r in matrix_text(app).values()) == 2,
        )
        rows = matrix_text(app)
        assert set(rows) == {"eu-1", "us-1"}
        assert rows["eu-1"][1] == "Connected"
        # columns: cluster, agent, ok, api, web
        assert rows["eu-1"][4].startswith("Synced Healthy")
        assert rows["us-1"][4].startswith("Synced Degraded")
        assert rows["eu-1"][3].startswith("Pending")  # api has no auto-sync
        assert rows["eu-1"][2] == "1/2" and rows["us-1"][2] == "0/2"  # apps fine per cluster
        counts = str(app.screen.query_one("#counts", Static).render())
        assert "2 of 2 clusters, 2 apps" in counts and "need attention" in counts
        assert "live" in str(app.screen.query_one("#connection", Static).render())


async def test_filter_by_label_group_and_state(hub: hubproc.HubProc) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, "two rows", lambda: len(matrix_text(app)) == 2)
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = "env=dev"  # as typed
        await until(pilot, "the filter to apply", lambda: set(matrix_text(app)) == {"us-1"})
        await pilot.press("escape")
        await until(pilot, "the filter to clear", lambda: len(matrix_text(app)) == 2)
        await pilot.press("slash", *"degraded")  # typed key by key
        await until(pilot, "the state filter", lambda: set(matrix_text(app)) == {"us-1"})
        app.screen.query_one("#filter", Input).value = "group=production"
        await until(pilot, "the group filter", lambda: set(matrix_text(app)) == {"eu-1"})
        app.screen.query_one("#filter", Input).value = "group=production degraded"  # both
        await until(pilot, "nothing matching both", lambda: set(matrix_text(app)) == set())


async def test_sync_asks_first_then_the_hub_records_it(hub: hubproc.HubProc) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, "two rows", lambda: len(matrix_text(app)) == 2)
        table = app.screen.query_one("#matrix", Matrix)
        table.focus()
        table.move_cursor(row=0, column=3)  # eu-1 / api
        await pilot.press("s")
        await until(pilot, "the confirmation", lambda: app.screen.__class__.__name__ == "Confirm")
        await pilot.press("n")
        await until(
            pilot, "the answer closing it", lambda: app.screen.__class__.__name__ != "Confirm"
        )
        assert not [
            e for e in hub.hub.db.call(hub.hub.db.events, app="api") if e.kind == "sync-requested"
        ]
        await pilot.press("s", "y")
        await until(
            pilot,
            "the sync to reach the hub, recorded under the token's name",
            lambda: any(
                e.kind == "sync-requested" and e.actor == "admin"
                for e in hub.hub.db.call(hub.hub.db.events, app="api")
            ),
        )
        await until(
            pilot, "api to be applied on eu-1", lambda: "Synced" in matrix_text(app)["eu-1"][3]
        )


async def test_a_read_only_token_is_told_why_it_cannot_act(hub: hubproc.HubProc) -> None:
    app = tui_app.make_app(client=client_for(hub, "readonly"))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, "two rows", lambda: len(matrix_text(app)) == 2)
        table = app.screen.query_one("#matrix", Matrix)
        table.focus()
        table.move_cursor(row=0, column=4)
        await pilot.press("p", "y")
        await until(
            pilot,
            "the refusal",
            lambda: any("needs an operator token" in str(n.message) for n in app._notifications),
        )
        assert not hub.hub.paused


async def test_help_and_the_app_detail(hub: hubproc.HubProc) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, "two rows", lambda: len(matrix_text(app)) == 2)
        await pilot.press("question_mark")
        await until(pilot, "help", lambda: app.screen.__class__.__name__ == "Help")
        await pilot.press("escape")
        table = app.screen.query_one("#matrix", Matrix)
        table.focus()
        table.move_cursor(row=1, column=4)  # us-1 / web
        await pilot.press("enter")
        await until(pilot, "the app screen", lambda: app.screen.__class__.__name__ == "AppDetail")
        clusters = app.screen.query_one("#clusters", DataTable)
        reasons = {
            str(r.key.value): str(clusters.get_row(r.key)[-1]) for r in clusters.ordered_rows
        }
        assert reasons["us-1"] == "Deployment web/web: rollout stuck"
        await pilot.press("escape")
        await until(pilot, "the overview", lambda: app.screen.__class__.__name__ == "Overview")
        await pilot.press("q")  # quits from the overview too (the demo relies on it)
        await until(pilot, "the app to exit", lambda: app._exit)


async def test_a_lost_hub_is_shown_and_the_data_marked_stale(hub: hubproc.HubProc) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, "live", lambda: app.live)
        await hub.running._server.stop(grace=0)  # the hub gone, not stopped cleanly
        line = app.screen.query_one("#connection", Static)
        await until(
            pilot, "the lost connection to show", lambda: "stale since" in str(line.render())
        )
        assert line.has_class("stale")
        assert len(matrix_text(app)) == 2, "the last known fleet stays on screen"


async def test_roll_back_to_a_revision_picked_from_the_history(hub: hubproc.HubProc) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot,
            "both clusters reporting web",
            lambda: sum("Synced" in r[4] for r in matrix_text(app).values()) == 2,
        )
        table = app.screen.query_one("#matrix", Matrix)
        table.move_cursor(row=0, column=4)  # web
        await pilot.press("h")
        await until(pilot, "the history", lambda: app.screen.__class__.__name__ == "History")
        events = app.screen.query_one("#events", DataTable)
        await until(pilot, "events to load", lambda: events.row_count > 0)
        kinds = [str(events.get_row(r.key)[1]) for r in events.ordered_rows]
        assert "assigned" in kinds and "applied" in kinds
        events.move_cursor(row=kinds.index("assigned"))
        await pilot.press("r")
        await until(pilot, "the confirmation", lambda: app.screen.__class__.__name__ == "Confirm")
        await pilot.press("y")
        head = hub.hub.heads["platform"]
        await until(pilot, "the pin", lambda: hub.hub.pins.get(("web", "")) == head)
        await pilot.press("escape")
        await until(
            pilot, "the pin mark in the matrix", lambda: "📌" in matrix_text(app)["eu-1"][4]
        )


async def test_the_cluster_screen_shows_labels_certificate_versions_and_apps(
    hub: hubproc.HubProc,
) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot,
            "both clusters reporting",
            lambda: sum("Synced" in r[4] for r in matrix_text(app).values()) == 2,
        )
        table = app.screen.query_one("#matrix", Matrix)
        table.move_cursor(row=0, column=0)  # eu-1
        await pilot.press("c")
        await until(
            pilot, "the cluster screen", lambda: app.screen.__class__.__name__ == "ClusterDetail"
        )
        info = str(app.screen.query_one("#cluster-info", Static).render())
        assert info.startswith("Connected (last seen ")
        assert "env=prod" in info and "fleetops.io/cluster=eu-1" in info
        assert "certificate valid until " in info
        says = str(app.screen.query_one("#agent-says", Static).render())
        assert "agent fake" in says and "agent fake" not in info
        apps = app.screen.query_one("#cluster-apps", DataTable)
        assert sorted(str(apps.get_row(r.key)[0]) for r in apps.ordered_rows) == ["api", "web"]
