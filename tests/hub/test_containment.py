"""One bad file is one app's error: the other apps are planned, the poller keeps fetching, and
a fixed commit heals the bad app. The hub runs in-process on a real Git repository with the
real kustomize; the cluster is a hand-driven agent (tests/support/rawagent)."""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import AsyncIterator, Callable

import pytest

from fleetops.proto.v1 import agent_pb2
from tests.support import fleet, hubproc, wait


def configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}


def non_utf8(repo: fleet.Repo) -> None:
    (repo.work / "apps/bad").mkdir(parents=True, exist_ok=True)
    (repo.work / "apps/bad/cm.yaml").write_bytes(b"kind: ConfigMap\nname: \xff\xfe\n")


def list_kustomization(repo: fleet.Repo) -> None:
    repo.write("apps/bad/kustomization.yaml", "- resources\n- cm.yaml\n")
    repo.write("apps/bad/cm.yaml", configmap("x"))


def number_resources(repo: fleet.Repo) -> None:
    repo.write("apps/bad/kustomization.yaml", "resources: 5\n")


def list_fleet_yaml(repo: fleet.Repo) -> None:
    repo.write("apps/bad/fleet.yaml", "- defaultNamespace: x\n")
    repo.write("apps/bad/cm.yaml", configmap("x"))


def symlink_loop(repo: fleet.Repo) -> None:
    (repo.work / "apps/bad").mkdir(parents=True, exist_ok=True)
    os.symlink("b.yaml", repo.work / "apps/bad/a.yaml")
    os.symlink("a.yaml", repo.work / "apps/bad/b.yaml")
    repo.write("apps/bad/cm.yaml", configmap("x"))


def deep_nesting(repo: fleet.Repo) -> None:
    repo.write("apps/bad/cm.yaml", "kind: ConfigMap\ndata: " + "[" * 20000 + "]" * 20000 + "\n")


# the bad input, and what the bad app's cell then says (None: the hub passes the file on and
# the agent refuses it per resource, as it does with any manifest it cannot parse)
BAD_INPUTS: dict[str, tuple[Callable[[fleet.Repo], None], str | None]] = {
    "non-UTF-8 manifest": (non_utf8, "apps/bad/cm.yaml: not UTF-8"),
    "list-shaped kustomization.yaml": (list_kustomization, "invalid Kustomization"),
    "resources: 5": (number_resources, "invalid Kustomization"),
    "list-shaped fleet.yaml": (list_fleet_yaml, "apps/bad/fleet.yaml: expected a mapping"),
    "symlink loop": (symlink_loop, "symlink"),
    "deep nesting": (deep_nesting, None),
}


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[tuple[hubproc.HubProc, fleet.Repo]]:
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write("apps/good/cm.yaml", configmap("good"))
    repo.write("apps/bad/cm.yaml", configmap("bad"))
    repo.commit("both apps render")
    config = hubproc.hub_yaml(repo.url, {"bad": "apps/bad", "good": "apps/good"})
    async with hubproc.running(tmp_path, config, tools=hubproc.tools()) as proc:
        yield proc, repo


@pytest.mark.parametrize("bad_input", sorted(BAD_INPUTS))
async def test_one_bad_file_is_that_apps_error_and_the_rest_goes_on(
    hub: tuple[hubproc.HubProc, fleet.Repo], bad_input: str
) -> None:
    proc, repo = hub
    agent = await proc.agent("c1")
    async with proc.channel(agent) as ch:
        stream = await agent.connect(ch, agent_pb2.Hello())
        first = await stream.next_assignments()
        before = {a.app: a.revision for a in first.assignments}
        assert set(before) == {"bad", "good"}

        shutil.rmtree(repo.work / "apps/bad")
        make_bad, reason = BAD_INPUTS[bad_input]
        make_bad(repo)
        repo.write("apps/good/cm2.yaml", configmap("good-2"))
        broken = repo.commit(f"break app bad with a {bad_input}")
        proc.hub.trigger_fetch("platform")
        moved = await wait.until(
            "the good app to move to the new commit",
            lambda: proc.revision("c1", "good") == broken,
            within=30,
        )
        assert moved
        cell = proc.hub.cell("c1", proc.hub.cfg.app("bad"))  # type: ignore[arg-type]
        assert cell is not None
        held = proc.revision("c1", "bad") == before["bad"]
        if reason is None:
            assert not held, "a file the agent judges was held back by the hub"
        else:
            assert held, f"the bad app moved to a commit that does not render: {cell.reason}"
            assert reason in cell.reason

        shutil.rmtree(repo.work / "apps/bad")
        repo.write("apps/bad/cm.yaml", configmap("fixed"))
        fixed = repo.commit("fix app bad")
        proc.hub.trigger_fetch("platform")
        await wait.until(
            "the poller to pick up the fix",
            lambda: proc.revision("c1", "bad") == fixed,
            within=30,
        )
        stream.call.cancel()
