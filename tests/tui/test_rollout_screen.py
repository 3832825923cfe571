"""The rollout screen and the rollout's word in the GATE column.

Behaviour against a real in-process hub (tests/support/rolloutfleet.py: podinfo rolling out
to a canary, then prod one cluster at a time, an hour's bake each on a ManualClock, FAKE
agents reporting Healthy); layout from a FAKE hub client serving one fixed rollout mid-way
(layout is what the snapshot is about; its SVG was looked at before it was committed)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from fleetops.proto import rollouttext
from fleetops.proto.v1 import fleet_pb2, types_pb2
from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui import model
from fleetops.tui.screens import rollout
from fleetops.tui.widgets.matrix import Matrix
from tests.support import hubproc, rolloutfleet
from tests.tui import screen

SIZE = (120, 36)

# -- the model: what the GATE column and the screen's cells say


def test_the_gate_column_shows_the_rollout_unless_a_pin_pause_or_offline_agent_holds_it() -> None:
    connected = types_pb2.Cluster(name="eu-1", connectivity=types_pb2.CONNECTIVITY_CONNECTED)
    offline = types_pb2.Cluster(name="eu-1", connectivity=types_pb2.CONNECTIVITY_DISCONNECTED)
    app = fleet_pb2.App(name="podinfo")
    words = {
        types_pb2.ROLLOUT_GATE_WAITING: "waiting",
        types_pb2.ROLLOUT_GATE_PROGRESSING: "progressing",
        types_pb2.ROLLOUT_GATE_BAKING: "baking",
        types_pb2.ROLLOUT_GATE_DEFERRED: "deferred",
        types_pb2.ROLLOUT_GATE_FAILED: "failed",
        types_pb2.ROLLOUT_GATE_HALTED: "halted",
        types_pb2.ROLLOUT_GATE_DONE: "done",
    }
    for value, word in words.items():
        cell = fleet_pb2.ClusterAppStatus(cluster="eu-1", app="podinfo", gate=value)
        assert model.gate(cell, app, connected) == word
    baking = fleet_pb2.ClusterAppStatus(gate=types_pb2.ROLLOUT_GATE_BAKING)
    assert model.gate(baking, app, offline) == "agent offline"
    assert model.gate(baking, fleet_pb2.App(name="podinfo", paused=True), connected) == "paused"
    pinned = fleet_pb2.ClusterAppStatus(
        gate=types_pb2.ROLLOUT_GATE_BAKING, pinned_revision="ab" * 20
    )
    assert model.gate(pinned, app, connected) == "pinned abababa"
    assert model.gate(fleet_pb2.ClusterAppStatus(), app, connected) == "open"  # no rollout
    newer = fleet_pb2.ClusterAppStatus()
    newer.gate = 99  # type: ignore[assignment]  # a value from a newer hub
    assert model.gate(newer, app, connected) == "rollout Unknown"


def test_cluster_states_and_gate_readings_read_as_the_operator_needs() -> None:
    baking = fleet_pb2.RolloutCluster(phase="Baking", bake_left_seconds=252.4)
    assert model.rollout_cluster_state(baking) == "Baking 4m12s left"
    assert model.rollout_cluster_state(fleet_pb2.RolloutCluster(phase="Deferred")) == "Deferred"
    passed = fleet_pb2.RolloutGateReading(
        name="error-rate", verdict="pass", value=0.003, has_value=True, threshold="< 0.01"
    )
    assert rollouttext.gate_reading(passed) == "error-rate 0.003 (< 0.01) pass"
    failing = fleet_pb2.RolloutGateReading(
        name="error-rate", verdict="fail", value=0.1, has_value=True, threshold="< 0.01",
        failures=1, failure_limit=2, message="error-rate = 0.1 (passes when < 0.01)",
    )  # fmt: skip
    assert rollouttext.gate_reading(failing) == (
        "error-rate 0.1 (< 0.01) fail 1/2 failures: error-rate = 0.1 (passes when < 0.01)"
    )
    unmeasured = fleet_pb2.RolloutGateReading(name="smoke", threshold="2xx")
    assert rollouttext.gate_reading(unmeasured) == "smoke (2xx) not measured yet"


# -- against a real hub


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[hubproc.HubProc]:
    async with rolloutfleet.running(tmp_path) as proc:
        yield proc


def client_for(hub: hubproc.HubProc, role: str = "operator") -> tui_client.HubClient:
    creds = tui_client.Credentials(hub.address, hub.ca_pem, hub.running.tokens[role])
    return tui_client.HubClient(creds)


def rows(table: DataTable[Any]) -> dict[str, list[str]]:
    return {str(r.key.value): [str(c) for c in table.get_row(r.key)] for r in table.ordered_rows}


def shown(pilot: Pilot[Any], table_id: str) -> dict[str, list[str]]:
    found = pilot.app.screen.query(f"#{table_id}")
    return rows(found.first(DataTable)) if found else {}


async def open_app(pilot: Pilot[Any], app: str) -> None:
    """From the overview, the app screen of `app` (enter on its column)."""
    await screen.until(
        pilot,
        "three clusters",
        lambda: pilot.app.screen.query_one("#matrix", Matrix).row_count == 3,
    )
    matrix = pilot.app.screen.query_one("#matrix", Matrix)
    column = next(i for i, c in enumerate(matrix.columns) if c.key == app)
    matrix.move_cursor(row=0, column=column)
    await pilot.press("enter")
    await screen.until(
        pilot, f"{app}'s screen", lambda: type(pilot.app.screen).__name__ == "AppDetail"
    )


async def test_open_the_rollout_from_the_app_screen_and_promote_the_canary(
    hub: hubproc.HubProc,
) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, "podinfo")
        # the GATE column: the canary bakes, prod waits for it
        await screen.until(
            pilot,
            "the canary baking and prod waiting in the GATE column",
            lambda: (
                [r[6] for _, r in sorted(shown(pilot, "clusters").items())]
                == ["baking", "waiting", "waiting"]
            ),
        )
        await pilot.press("o")
        await screen.until(
            pilot,
            "the canary baking on the rollout screen",
            lambda: (
                shown(pilot, "rollout-clusters").get("canary-1", [""] * 3)[2] == "Baking 1h00m left"
            ),
        )
        clusters = shown(pilot, "rollout-clusters")
        assert [r[0] for r in clusters.values()] == ["canary", "prod", ""]  # grouped by step
        assert clusters["prod-1"][2] == clusters["prod-2"][2] == "Waiting"
        steps = rows(app.screen.query_one("#steps", DataTable))
        assert [r[:3] for r in steps.values()] == [
            ["canary", "Running", "0/1"],
            ["prod", "Waiting", "0/2"],
        ]
        summary = str(app.screen.query_one("#rollout-summary", Static).render())
        assert "Running, step 1/2 canary" in summary

        await pilot.press("a")  # abort asks first; no leaves it running
        await screen.until(pilot, "the question", lambda: type(app.screen).__name__ == "Confirm")
        await pilot.press("n")
        await screen.until(
            pilot, "the answer", lambda: type(app.screen).__name__ == "RolloutScreen"
        )

        await pilot.press("g")
        await screen.until(
            pilot,
            "the canary passed and prod-1 baking (maxParallel 1)",
            lambda: (
                [r[2] for r in shown(pilot, "rollout-clusters").values()]
                == ["Passed", "Baking 1h00m left", "Waiting"]
            ),
        )
        assert "Running, step 2/2 prod" in str(
            app.screen.query_one("#rollout-summary", Static).render()
        )
        said = [str(n.message) for n in app._notifications]
        assert any("step canary of" in m and "promoted by admin" in m for m in said), said
        r = await rolloutfleet.status(hub)
        assert [s.promoted for s in r.steps] == [True, False]


async def test_an_app_without_a_rollout_policy_shows_the_hubs_message(
    hub: hubproc.HubProc,
) -> None:
    app = tui_app.make_app(client=client_for(hub))
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, "plain")
        await pilot.press("o")
        await screen.until(
            pilot,
            "the hub's reason on the rollout screen",
            lambda: (
                "has no rollout policy"
                in str(app.screen.query_one("#rollout-summary", Static).render())
            ),
        )
        assert app.screen.query_one("#rollout-clusters", DataTable).row_count == 0
        await pilot.press("g")  # nothing to promote: said, not sent
        await screen.until(
            pilot,
            "the warning",
            lambda: any("has no rollout policy" in str(n.message) for n in app._notifications),
        )


# -- layout


REV = "4f2b9c1e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c"
REJECTED = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d"
STABLE = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"


def mid_way() -> fleet_pb2.Rollout:
    """podinfo mid-way: the canary passed, prod-eu bakes one cluster with one deferred."""
    r = fleet_pb2.Rollout(
        app="podinfo", revision=REV, phase="Running", step=1, stable_revision=STABLE,
        subject="podinfo: two replicas", author="Fleet Tester",
    )  # fmt: skip
    r.rejected[REJECTED] = (
        "step canary failed: canary-1: gate error-rate failed: error-rate = 0.1 "
        "(passes when < 0.01)"
    )
    r.steps.add(name="canary", phase="Passed", max_parallel=1, bake_seconds=600,
                gates=["error-rate", "smoke"], clusters=1, passed=1)  # fmt: skip
    r.steps.add(name="prod-eu", phase="Running", max_parallel=1, bake_seconds=1800,
                gates=["error-rate"], clusters=3, passed=1, deferred=1)  # fmt: skip
    r.steps.add(name="prod", phase="Waiting", max_parallel=1, clusters=2)

    def rate(value: float) -> fleet_pb2.RolloutGateReading:
        return fleet_pb2.RolloutGateReading(
            name="error-rate", kind="prometheus", verdict="pass", value=value, has_value=True,
            threshold="< 0.01", failure_limit=2,
        )  # fmt: skip

    smoke = fleet_pb2.RolloutGateReading(
        name="smoke", kind="webhook", verdict="pass", threshold="2xx", failure_limit=1,
        message="smoke: webhook answered 200: smoke tests green (41/41)",
    )  # fmt: skip
    gate = types_pb2.RolloutGate
    r.clusters.add(cluster="canary-1", step="canary", phase="Passed", gate=gate.ROLLOUT_GATE_DONE,
                   gates=[rate(0.003), smoke])  # fmt: skip
    r.clusters.add(cluster="eu-1", step="prod-eu", phase="Passed", gate=gate.ROLLOUT_GATE_DONE,
                   gates=[rate(0.002)])  # fmt: skip
    r.clusters.add(cluster="eu-2", step="prod-eu", phase="Baking", gate=gate.ROLLOUT_GATE_BAKING,
                   bake_left_seconds=252, reason="baking, 4m12s left", gates=[rate(0.004)])  # fmt: skip
    r.clusters.add(
        cluster="eu-3", step="prod-eu", phase="Deferred", gate=gate.ROLLOUT_GATE_DEFERRED,
        reason="offline: catches up when it returns",
        gates=[fleet_pb2.RolloutGateReading(name="error-rate", threshold="< 0.01")],
    )  # fmt: skip
    for name in ("us-1", "us-2"):
        r.clusters.add(cluster=name, step="prod", phase="Waiting", gate=gate.ROLLOUT_GATE_WAITING)
    return r


class FakeRolloutHub(tui_client.HubClient):
    """A fake: one app on six clusters, and the rollout `mid_way` whenever asked."""

    def __init__(self) -> None:
        super().__init__(tui_client.Credentials("fake:0", b"", "fake-token"))

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        snap = fleet_pb2.Snapshot(version=1)
        snap.apps.add(name="podinfo", repo="platform", path="apps/podinfo", head_revision=REV)
        for c in mid_way().clusters:
            snap.clusters.add(name=c.cluster, connectivity=types_pb2.CONNECTIVITY_CONNECTED)
            snap.statuses.add(cluster=c.cluster, app="podinfo", gate=c.gate)
        yield fleet_pb2.FleetChange(version=1, snapshot=snap)
        await asyncio.Event().wait()

    async def rollout_status(self, app: str = "") -> list[fleet_pb2.Rollout]:
        return [mid_way()]

    async def close(self) -> None:
        pass


def test_the_rollout_screen_mid_way(snap_compare: Any) -> None:
    async def open_rollout(pilot: Pilot[Any]) -> None:
        await screen.until(
            pilot, "the fleet", lambda: pilot.app.screen.query_one("#matrix", Matrix).row_count
        )
        pilot.app.push_screen(rollout.RolloutScreen("podinfo"))
        await screen.until(
            pilot,
            "the rollout's clusters",
            lambda: len(shown(pilot, "rollout-clusters")) == 6,
        )
        await pilot.pause()

    app = tui_app.make_app(client=FakeRolloutHub())
    assert snap_compare(app, terminal_size=SIZE, run_before=open_rollout)
