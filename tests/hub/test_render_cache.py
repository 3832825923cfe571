"""The render cache on a real hub: an app is rendered again exactly when a path its last
render read changes (`Rendered.inputs`), so a commit touching only a Kustomize base outside the
app's directory re-renders it, and a commit touching an unrelated directory does not. The
kustomize binary is wrapped by a FAKE that counts its runs, then runs the real kustomize."""

from __future__ import annotations

import contextlib
import pathlib
import stat
from collections.abc import AsyncIterator

import pytest

from fleetops.hub import render
from fleetops.proto.v1 import agent_pb2
from tests import localkube
from tests.support import fleet, hubproc, wait

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: %s}\n"


class Counted:
    def __init__(self, runs: pathlib.Path) -> None:
        self.runs = runs

    def __call__(self) -> int:
        """How many times the hub ran kustomize so far."""
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


@pytest.fixture
async def hub(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[hubproc.HubProc, fleet.Repo, Counted]]:
    runs = tmp_path / "kustomize-runs"
    counting = tmp_path / "counting-kustomize"
    counting.write_text(
        f'#!/bin/sh\necho run >> {runs}\nexec {localkube.binary("kustomize")} "$@"\n'
    )
    counting.chmod(counting.stat().st_mode | stat.S_IXUSR)
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write("base/kustomization.yaml", "resources: [cm.yaml]\n")
    repo.write("base/cm.yaml", CM % "info")
    repo.write("apps/shop/kustomization.yaml", "resources: [../../base]\n")
    repo.write("docs/notes.yaml", {"note": "first"})
    repo.commit("first")
    config = hubproc.hub_yaml(repo.url, {"shop": "apps/shop"})
    tools = render.Tools(helm=localkube.binary("helm"), kustomize=str(counting))
    async with hubproc.running(tmp_path, config, tools=tools) as proc:
        yield proc, repo, Counted(runs)


@contextlib.asynccontextmanager
async def connected(proc: hubproc.HubProc, cluster: str) -> AsyncIterator[None]:
    """An agent of `cluster` on its stream, with its first assignments."""
    agent = await proc.agent(cluster)
    async with proc.channel(agent) as channel:
        stream = await agent.connect(channel, agent_pb2.Hello())
        await stream.next_assignments()
        yield
        stream.call.cancel()


async def assigned(proc: hubproc.HubProc, head: str) -> str:
    """The bundle digest the hub assigns cluster c1's shop once it plans `head`."""
    await wait.until(
        f"shop assigned at {head[:8]}", lambda: proc.revision("c1", "shop") == head, within=30
    )
    got = proc.hub.assignment("c1", "shop")
    assert got is not None
    return got.digest


async def test_a_commit_touching_only_a_kustomize_base_outside_the_app_re_renders_it(
    hub: tuple[hubproc.HubProc, fleet.Repo, Counted],
) -> None:
    proc, repo, kustomize_runs = hub
    async with connected(proc, "c1"):
        first = await assigned(proc, proc.hub.heads["platform"])
        before = kustomize_runs()
        assert before >= 1
        repo.write("base/cm.yaml", CM % "debug")
        head = repo.commit("the base changes; apps/shop does not")
        proc.hub.trigger_fetch("platform")
        assert await assigned(proc, head) != first, "the base change never reached the bundle"
        assert kustomize_runs() > before


async def test_a_commit_touching_an_unrelated_directory_does_not_re_render_the_app(
    hub: tuple[hubproc.HubProc, fleet.Repo, Counted],
) -> None:
    proc, repo, kustomize_runs = hub
    async with connected(proc, "c1"):
        first = await assigned(proc, proc.hub.heads["platform"])
        before = kustomize_runs()
        repo.write("docs/notes.yaml", {"note": "second"})
        head = repo.commit("only docs change")
        proc.hub.trigger_fetch("platform")
        assert await assigned(proc, head) == first
        assert kustomize_runs() == before, "an unrelated change ran kustomize again"
