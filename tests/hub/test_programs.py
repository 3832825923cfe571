"""`fleetops-hub serve` finds helm and kustomize by itself: on PATH, else where `make setup`
built them, and when neither has them, the hub and the app's error say both places."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import sys
from typing import Any

import grpc
import pytest
import yaml

from fleetops.hub import programs
from tests import localkube
from tests.support import fleet, rawagent, wait

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"


def bare_path(tmp: pathlib.Path) -> str:
    """A PATH with git and python but no helm or kustomize."""
    bin_dir = tmp / "bare-bin"
    bin_dir.mkdir()
    for tool in ("git",):
        found = shutil.which(tool)
        assert found, f"{tool} is needed on PATH"
        (bin_dir / tool).symlink_to(found)
    return os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable)])


def cache_with_tools(tmp: pathlib.Path) -> pathlib.Path:
    """A cache laid out as `make setup` lays it out, holding the pinned helm and kustomize."""
    cache = tmp / "cache"
    (cache / "bin").mkdir(parents=True)
    for tool in ("helm", "kustomize"):
        (cache / "bin" / tool).symlink_to(localkube.binary(tool))
    return cache


def chart_hub(tmp: pathlib.Path) -> pathlib.Path:
    repo = fleet.Repo.create(tmp)
    for f in (FIXTURES / "charts/web").rglob("*"):
        if f.is_file():
            repo.write(f"apps/web/{f.relative_to(FIXTURES / 'charts/web')}", f.read_text())
    repo.commit("a chart")
    config = tmp / "hub.yaml"
    hub_yaml = {
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": 1}],
        "apps": [{"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web"}],
    }
    config.write_text(yaml.safe_dump(hub_yaml))
    return config


def target_of(hub: fleet.Hub) -> Any:
    """The app's target once it rendered or failed for a cluster whose (hand-driven) agent
    is connected."""
    ca = (hub.data / "ca.crt").read_bytes()
    client = hub.fleet()

    def rendered() -> Any:
        apps = [a for a in client.snapshot().apps if a.name == "web" and a.targets]
        t = apps[0].targets[0] if apps else None
        return t if t is not None and (t.bundle_digest or t.render_error) else None

    async def connected() -> Any:
        token = await rawagent.registration_token(hub.address, ca, hub.token(), "c1", {})
        agent = rawagent.RawAgent()
        await agent.register(hub.address, ca, token)
        address = f"127.0.0.1:{agent.agent_port}"
        async with grpc.aio.secure_channel(address, agent.credentials(ca)) as ch:
            await agent.connect(ch)
            return await wait.until(
                "the chart app rendered or failed",
                lambda: asyncio.to_thread(rendered),
                within=60,
                explain=hub.process.tail,
            )

    return asyncio.run(connected())


def test_serve_uses_the_helm_make_setup_built_when_path_has_none(tmp_path: pathlib.Path) -> None:
    env = {
        **os.environ,
        "PATH": bare_path(tmp_path),
        "FLEETOPS_CACHE": str(cache_with_tools(tmp_path)),
    }
    hub = fleet.start_hub(chart_hub(tmp_path), tmp_path / "data", pinned_tools=False, env=env)
    try:
        target = target_of(hub)
        assert target.render_error == "", target.render_error
        assert target.bundle_digest
        assert "not installed" not in hub.process.tail()
    finally:
        hub.process.stop()


def test_serve_names_both_places_when_neither_has_helm(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty-cache"
    env = {**os.environ, "PATH": bare_path(tmp_path), "FLEETOPS_CACHE": str(empty)}
    hub = fleet.start_hub(chart_hub(tmp_path), tmp_path / "data", pinned_tools=False, env=env)
    try:
        target = target_of(hub)
        assert "helm is not installed on the hub" in target.render_error
        assert "on PATH" in target.render_error
        assert str(empty / "bin") in target.render_error
        log = hub.process.tail()
        assert f"helm was found neither on PATH nor in {empty / 'bin'}" in log
        assert f"kustomize was found neither on PATH nor in {empty / 'bin'}" in log
    finally:
        hub.process.stop()


@pytest.mark.parametrize("where", ["path", "cache", "explicit"])
def test_find_looks_on_path_then_in_the_cache(
    where: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "on-path"
    on_path.mkdir()
    cache = cache_with_tools(tmp_path)
    monkeypatch.setenv("FLEETOPS_CACHE", str(cache))
    monkeypatch.setenv("PATH", str(on_path))
    if where == "path":
        (on_path / "helm").symlink_to(localkube.binary("helm"))
        assert programs.find("helm").path == str(on_path / "helm")
    elif where == "cache":
        assert programs.find("helm").path == str(cache / "bin" / "helm")
    else:
        found = programs.find("helm", explicit=str(tmp_path / "nowhere" / "helm"))
        assert found.path == ""
        assert f"--helm {tmp_path / 'nowhere' / 'helm'}" in found.missing
