"""A slow render delays only its own app: renders run outside the planning lock, so an agent
connecting meanwhile gets its assignments and the other apps move on. The helm binary is
wrapped by a FAKE that sleeps before running the real helm (a stand-in for a heavy chart)."""

from __future__ import annotations

import pathlib
import stat
from collections.abc import AsyncIterator

import pytest

from fleetops.hub import render
from fleetops.proto.v1 import agent_pb2
from tests import localkube
from tests.support import fleet, hubproc, wait

SLOW = 8  # seconds the fake helm sleeps once it is armed


@pytest.fixture
async def hub(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[hubproc.HubProc, fleet.Repo, pathlib.Path]]:
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
    config = hubproc.hub_yaml(repo.url, {"chart": "apps/chart", "plain": "apps/plain"})
    slow = render.Tools(helm=str(slow_helm), kustomize=localkube.binary("kustomize"))
    try:
        async with hubproc.running(tmp_path, config, tools=slow) as proc:
            yield proc, repo, armed
    finally:
        armed.unlink(missing_ok=True)


async def test_a_slow_helm_render_holds_neither_connects_nor_other_apps(
    hub: tuple[hubproc.HubProc, fleet.Repo, pathlib.Path],
) -> None:
    proc, repo, armed = hub
    first = await proc.agent("c1")
    async with proc.channel(first) as ch1:
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
        proc.hub.trigger_fetch("platform")
        await wait.until(
            "the plain app to move while the chart renders",
            lambda: proc.revision("c1", "plain") == head,
            within=SLOW / 2,
        )
        assert proc.revision("c1", "chart") != head  # still rendering
        second = await proc.agent("c2")
        async with proc.channel(second) as ch2:
            s2 = await second.connect(ch2, agent_pb2.Hello())
            got = await s2.next_assignments(within=SLOW / 2)
            assert {a.app for a in got.assignments} == {"plain"}  # the chart comes when rendered
            await wait.until(
                "the chart to reach both clusters once rendered",
                lambda: all(proc.revision(c, "chart") == head for c in ("c1", "c2")),
                within=SLOW * 3,
            )
            s2.call.cancel()
        s1.call.cancel()
