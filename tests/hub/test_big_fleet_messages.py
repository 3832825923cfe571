"""Messages that fit: 50 apps of 500 resources each reach an agent whose channel keeps gRPC's
default 4 MiB limit; what does not fit inline comes by digest (a real hub and repo)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from fleetops.hub import sessions
from fleetops.proto import bundles
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from tests.support import fleet, hubproc

APPS = 50
RESOURCES = 500


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[hubproc.HubProc]:
    repo = fleet.Repo.create(tmp_path / "git")
    for a in range(APPS):
        repo.write(
            f"apps/app{a}/cms.yaml",
            [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}"},
                 "data": {"key": f"value-{a}-{i}-" + "x" * 380}}
                for i in range(RESOURCES)
            ],
        )  # fmt: skip
    repo.commit("50 apps of 500 objects")
    config = hubproc.hub_yaml(repo.url, {f"app{a}": f"apps/app{a}" for a in range(APPS)})
    async with hubproc.running(tmp_path, config) as proc:
        yield proc


async def test_fifty_apps_of_five_hundred_objects_reach_an_agent_with_default_limits(
    hub: hubproc.HubProc,
) -> None:
    agent = await hub.agent("big")
    async with hub.channel(agent) as ch:  # gRPC's default 4 MiB message limit
        stream = await agent.connect(ch, agent_pb2.Hello())
        got = await stream.next_assignments(within=120)
        while len(got.assignments) < APPS:  # renders that took longer come in later pushes
            got = await stream.next_assignments(within=120)
        stream.call.cancel()
        assert got.ByteSize() < 4 * 1024 * 1024
        inline = [a for a in got.assignments if a.HasField("bundle")]
        fetched = [a for a in got.assignments if not a.HasField("bundle")]
        assert sum(a.bundle.ByteSize() for a in inline) <= sessions.INLINE_BUDGET
        assert fetched, "every bundle fitted inline: the test no longer tests the cap"
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for a in fetched:
            data = b"".join(
                [
                    c.data
                    async for c in stub.GetBundle(
                        agent_pb2.GetBundleRequest(digest=a.bundle_digest)
                    )
                ]
            )
            bundle = types_pb2.Bundle.FromString(data)
            assert bundles.digest(bundle) == a.bundle_digest
            assert sum(m.yaml.count("kind: ConfigMap") for m in bundle.manifests) == RESOURCES
