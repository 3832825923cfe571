"""Image automation on the hub's /metrics, read over HTTP from a real in-process hub and parsed
with prometheus_client's own parser (so every line is valid exposition format): a repository
in a real registry (Debian's docker-registry) scanned and committed to a real Git repository,
one whose image is not in the registry, and one update whose Git repository cannot be
reached. What an alert would fire on: scan_ok 0, update_ok 0, a policy's tag."""

from __future__ import annotations

import asyncio
import pathlib
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support import fleet, hubproc, wait
from tests.support import registry as registrypush
from tests.support.imagefleet import app_repo, push

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def get_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def scrape(port: int) -> Samples:
    """metric name -> (sorted labels) -> value, of the image metrics on /metrics."""
    text = get_metrics(port)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("fleetops_image_"):
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_image_metrics_show_scans_tags_policies_and_updates(tmp_path: pathlib.Path) -> None:
    with registrypush.registry_server(tmp_path / "reg") as reg:
        push(reg, "1.0.0", "1.1.0", "1.10.0", "2.0.0")
        repo = app_repo(tmp_path, reg.host)
        cfg = hubproc.hub_yaml(repo.url, {"web": "apps/web"})
        cfg["repos"].append(
            {"name": "gone", "url": f"file://{tmp_path}/no-such-repo.git", "pollInterval": "1h"}
        )
        cfg["imageRepositories"] = [
            {"name": "web", "image": f"{reg.host}/team/web", "interval": "1h"},
            {"name": "api", "image": f"{reg.host}/team/api", "interval": "1h"},
        ]
        cfg["imagePolicies"] = [
            {"name": "web-stable", "repository": "web",
             "policy": {"semver": {"range": ">=1.0.0 <2.0.0"}}},
            {"name": "api-stable", "repository": "api",
             "policy": {"semver": {"range": ">=1.0.0"}}},
        ]  # fmt: skip
        cfg["imageUpdates"] = [
            {"name": "platform-images", "repo": "platform", "paths": ["apps/"]},
            {"name": "gone-images", "repo": "gone", "paths": ["apps/"]},
        ]
        started = time.time()
        async with hubproc.running(tmp_path / "hub", cfg) as proc:
            port = proc.running.http_port
            await wait.until(
                "the image commit and the failed update",
                lambda: (
                    [u.commits > 0 or bool(u.error) for u in proc.hub.image_status().updates]
                    == [True, True]
                ),
                within=30,
            )
            got = await asyncio.to_thread(scrape, port)
    web, api = (("repository", "web"),), (("repository", "api"),)
    assert got["fleetops_image_repository_tags"] == {web: 4.0, api: 0.0}
    assert got["fleetops_image_repository_scan_ok"] == {web: 1.0, api: 0.0}
    scans = got["fleetops_image_repository_last_scan_timestamp_seconds"]
    assert set(scans) == {web, api}
    assert all(started <= v <= time.time() for v in scans.values()), scans
    assert got["fleetops_image_policy_info"] == {
        (("policy", "web-stable"), ("repository", "web"), ("tag", "1.10.0")): 1.0,
        (("policy", "api-stable"), ("repository", "api"), ("tag", "")): 1.0,
    }
    platform, gone = (("update", "platform-images"),), (("update", "gone-images"),)
    assert got["fleetops_image_update_commits_total"] == {platform: 1.0, gone: 0.0}
    assert got["fleetops_image_update_ok"] == {platform: 1.0, gone: 0.0}


async def test_without_image_automation_the_families_are_there_and_empty(
    tmp_path: pathlib.Path,
) -> None:
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write("apps/web/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n")
    repo.commit("web")
    cfg = hubproc.hub_yaml(repo.url, {"web": "apps/web"})
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        text = await asyncio.to_thread(get_metrics, proc.running.http_port)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "fleetops_image_repository_scan_ok" in names
    assert not [line for line in text.splitlines() if line.startswith("fleetops_image_")]
