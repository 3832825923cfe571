"""The TUI tells a quiet hub from a lost one: the hub's Watch stream sends heartbeats when
nothing changes, and the client gives up after a silence (a real in-process hub)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from fleetops.hub import fleet_service
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2
from fleetops.tui import client as tui_client
from tests.support import fleet, hubproc, wait


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[hubproc.HubProc]:
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write(
        "apps/web/cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}}
    )
    repo.commit("first")
    async with hubproc.running(
        tmp_path / "hub", hubproc.hub_yaml(repo.url, {"web": "apps/web"})
    ) as proc:
        yield proc


def client(hub: hubproc.HubProc, silence: float) -> tui_client.HubClient:
    creds = tui_client.Credentials(hub.address, hub.ca_pem, hub.running.tokens["readonly"])
    return tui_client.HubClient(creds, silence=silence)


async def test_a_quiet_hub_keeps_the_stream_alive_with_heartbeats(
    hub: hubproc.HubProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_service, "HEARTBEAT", 0.2)
    c = client(hub, silence=1.0)
    kinds = []
    try:
        async for change in c.watch():
            kinds.append(change.WhichOneof("change"))
            if kinds.count(None) == 4:
                break
    finally:
        await c.close()
    assert kinds[0] == "snapshot"  # then heartbeats (no change), and perhaps the first fetch
    assert set(kinds[1:]) <= {None, "repo", "app", "event"}


async def test_silence_past_the_limit_counts_as_a_lost_hub(
    hub: hubproc.HubProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_service, "HEARTBEAT", 60.0)  # a hub that went silent
    c = client(hub, silence=0.5)
    seen = []
    try:
        with pytest.raises(tui_client.HubSilentError, match="no word from the hub for 0 s|for 1 s"):
            async for change in c.watch():
                seen.append(change.WhichOneof("change"))
    finally:
        await c.close()
    assert seen[0] == "snapshot" and None not in seen  # no heartbeat came, and it noticed


async def test_a_watcher_that_stops_reading_has_its_stream_ended(
    hub: hubproc.HubProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_service, "STUCK", 1.0)
    monkeypatch.setattr(fleet_service, "HEARTBEAT", 0.5)
    creds = grpc.ssl_channel_credentials(root_certificates=hub.ca_pem)
    async with grpc.aio.secure_channel(hub.address, creds) as ch:
        call = fleet_pb2_grpc.FleetServiceStub(ch).Watch(
            fleet_pb2.WatchRequest(),
            metadata=(("authorization", f"Bearer {hub.running.tokens['readonly']}"),),
        )
        await call.read()  # the snapshot; then this client reads nothing more
        await wait.until("the hub to count the watcher", lambda: hub.hub.watchers)
        big = "x" * 100_000
        # Hub._announce is the one way in to the hub's event bus: core keeps its events.Bus
        # private (hub/ is not this branch's to change), so the test publishes through it.
        for _ in range(300):  # ~30 MB of changes nobody reads: far past any flow-control window
            hub.hub._announce(fleet_pb2.FleetChange(event=types_pb2.Event(message=big)))
        await wait.until("the stuck watcher to be dropped", lambda: not hub.hub.watchers, within=30)
        call.cancel()
