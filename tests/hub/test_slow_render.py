"""A slow render delays only its own app: renders run outside the planning lock, so an agent
connecting meanwhile gets its assignments and the other apps move on. The helm binary is
wrapped by a FAKE that sleeps before running the real helm (a stand-in for a heavy chart)."""

from __future__ import annotations

import pathlib
import stat
from collections.abc import AsyncIterator

import grpc
import pytest
import yaml

from fleetops.hub import render, server
from fleetops.proto.v1 import agent_pb2
from tests import localkube
from tests.e2e import fleet
from tests.support import rawagent, wait

SLOW = 8  # seconds the fake helm sleeps once it is armed


@pytest.fixture
async def hub(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[server.Running, fleet.Repo, pathlib.Path]]:
    armed = tmp_path / "slow-helm-armed"
    slow_helm = tmp_path / "slow-helm"
    slow_helm.write_text(
        f'#!/bin/sh\n[ -e {armed} ] && sleep {SLOW}\nexec {localkube.binary("helm")} "$@"\n'
    )
    slow_helm.chmod(slow_helm.stat().st_mode | stat.S_IXUSR)
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write("apps/chart/Chart.yaml", {"apiVersion": "v2", "name": "chart", "version": "0.1.0"})
    repo.write(
        "apps/chart/templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: chart}\n"
    )
    repo.write(
        "apps/plain/cm.yaml",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}},
    )
    repo.commit("first")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1h"}],
        "apps": [
            {"name": "chart", "repo": "platform", "path": "apps/chart", "namespace": "chart"},
            {"name": "plain", "repo": "platform", "path": "apps/plain", "namespace": "plain"},
        ],
    }))  # fmt: skip
    running = await server.start(
        config_path=cfg, data=tmp_path / "data", listen="127.0.0.1:0", agent_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        tools=render.Tools(helm=str(slow_helm), kustomize=localkube.binary("kustomize")),
    )  # fmt: skip
    await wait.until("the first fetch", lambda: running.hub.heads.get("platform"))
    try:
        yield running, repo, armed
    finally:
        armed.unlink(missing_ok=True)
        await running.stop()


async def connect(running: server.Running, name: str) -> tuple[rawagent.RawAgent, grpc.aio.Channel]:
    address = f"127.0.0.1:{running.grpc_port}"
    token = await rawagent.registration_token(
        address, running.ca.cert_pem, running.tokens["operator"], name, {}
    )
    agent = rawagent.RawAgent()
    await agent.register(address, running.ca.cert_pem, token)
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{running.agent_port}", agent.credentials(running.ca.cert_pem)
    )
    return agent, channel


async def test_a_slow_helm_render_holds_neither_connects_nor_other_apps(
    hub: tuple[server.Running, fleet.Repo, pathlib.Path],
) -> None:
    running, repo, armed = hub
    first, ch1 = await connect(running, "c1")
    async with ch1:
        s1 = await first.connect(ch1, agent_pb2.Hello())
        await s1.next_assignments()
        armed.touch()  # from now on every helm template takes SLOW seconds
        repo.write(
            "apps/chart/templates/cm2.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: chart2}\n",
        )
        repo.write(
            "apps/plain/cm2.yaml",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain2"}},
        )
        head = repo.commit("both apps change")
        running.hub.trigger_fetch("platform")
        await wait.until(
            "the plain app to move while the chart renders",
            lambda: _revision(running, "c1", "plain") == head,
            within=SLOW / 2,
        )
        assert _revision(running, "c1", "chart") != head  # still rendering
        second, ch2 = await connect(running, "c2")
        async with ch2:
            s2 = await second.connect(ch2, agent_pb2.Hello())
            got = await s2.next_assignments(within=SLOW / 2)
            assert {a.app for a in got.assignments} == {"plain"}  # the chart comes when rendered
            await wait.until(
                "the chart to reach both clusters once rendered",
                lambda: all(_revision(running, c, "chart") == head for c in ("c1", "c2")),
                within=SLOW * 3,
            )
            s2.call.cancel()
        s1.call.cancel()


def _revision(running: server.Running, cluster: str, app: str) -> str:
    """The revision the hub assigns `app` on `cluster` now ('' when none)."""
    got = running.hub.assignment(cluster, app)
    return got.revision if got is not None else ""
