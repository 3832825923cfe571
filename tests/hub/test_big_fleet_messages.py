"""Messages that fit: 50 apps of 500 resources each reach an agent whose channel keeps gRPC's
default 4 MiB limit; what does not fit inline comes by digest (a real hub and repo)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
import yaml

from fleetops.hub import render, server, sessions
from fleetops.proto import bundles
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from tests.e2e import fleet
from tests.support import rawagent, wait

APPS = 50
RESOURCES = 500


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[server.Running]:
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
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1h"}],
        "apps": [{"name": f"app{a}", "repo": "platform", "path": f"apps/app{a}",
                  "namespace": f"ns{a}"} for a in range(APPS)],
    }))  # fmt: skip
    running = await server.start(
        config_path=cfg, data=tmp_path / "data", listen="127.0.0.1:0", agent_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0", tools=render.Tools(),
    )  # fmt: skip
    await wait.until("the first fetch", lambda: running.hub.heads.get("platform"))
    try:
        yield running
    finally:
        await running.stop()


async def test_fifty_apps_of_five_hundred_objects_reach_an_agent_with_default_limits(
    hub: server.Running,
) -> None:
    address = f"127.0.0.1:{hub.grpc_port}"
    token = await rawagent.registration_token(
        address, hub.ca.cert_pem, hub.tokens["operator"], "big", {}
    )
    agent = rawagent.RawAgent()
    await agent.register(address, hub.ca.cert_pem, token)
    creds = agent.credentials(hub.ca.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{hub.agent_port}", creds) as ch:  # 4 MiB default
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
