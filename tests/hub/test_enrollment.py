"""Token lifetimes on a clock the test moves: a registration token works until it expires and
never after, and so does a named fleet API token. No sleeping: the hub's clock is injected
(hub.enrollment and hub.apitokens read it), the hub, TLS and store are real."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc
from tests.support import hubproc, rawagent


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[tuple[hubproc.HubProc, hubproc.ManualClock]]:
    clock = hubproc.ManualClock()
    async with hubproc.running(tmp_path, {"repos": [], "apps": []}, ready=(), clock=clock) as proc:
        yield proc, clock


async def create_token(proc: hubproc.HubProc, cluster: str, ttl: int) -> str:
    async with grpc.aio.secure_channel(
        proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
    ) as ch:
        resp = await fleet_pb2_grpc.FleetServiceStub(ch).CreateToken(
            fleet_pb2.CreateTokenRequest(cluster=cluster, ttl_seconds=ttl),
            metadata=rawagent.operator(proc.operator_token),
        )
        return str(resp.token)


async def test_a_registration_token_is_refused_once_its_lifetime_is_over(
    hub: tuple[hubproc.HubProc, hubproc.ManualClock],
) -> None:
    proc, clock = hub
    late = await create_token(proc, "late", ttl=60)
    clock.advance(61)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rawagent.RawAgent().register(proc.address, proc.ca_pem, late)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (refused.value.details() or "")
    assert "late" not in proc.hub.clusters


async def test_a_registration_token_works_until_its_last_second(
    hub: tuple[hubproc.HubProc, hubproc.ManualClock],
) -> None:
    proc, clock = hub
    token = await create_token(proc, "just-in-time", ttl=60)
    clock.advance(59)
    agent = rawagent.RawAgent()
    await agent.register(proc.address, proc.ca_pem, token)
    assert agent.cluster == "just-in-time"


async def test_a_fleet_api_token_stops_working_when_it_expires(
    hub: tuple[hubproc.HubProc, hubproc.ManualClock],
) -> None:
    proc, clock = hub
    async with grpc.aio.secure_channel(
        proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
    ) as ch:
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        made = await stub.CreateApiToken(
            fleet_pb2.CreateApiTokenRequest(name="ci", role="readonly", ttl_seconds=3600),
            metadata=rawagent.operator(proc.operator_token),
        )
        mine = rawagent.operator(made.token)
        assert (await stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=mine)).version >= 0
        clock.advance(3601)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=mine)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
