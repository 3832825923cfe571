"""Charts from Helm repositories and OCI registries, on a real hub: a real chart repository
(`helm repo index` over http.server on loopback) and a real OCI registry (docker-registry),
charts made with `helm package`, the hub's own fetch stage, then `helm template` offline."""

from __future__ import annotations

import contextlib
import logging
import pathlib
import stat
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import yaml

from fleetops.hub import config, errors
from fleetops.proto.v1 import agent_pb2, types_pb2
from tests.support import chartrepo, fleet, hubproc, wait


@contextlib.asynccontextmanager
async def connected(proc: hubproc.HubProc, cluster: str) -> AsyncIterator[None]:
    agent = await proc.agent(cluster)
    async with proc.channel(agent) as channel:
        stream = await agent.connect(channel, agent_pb2.Hello())
        await stream.next_assignments()
        yield
        stream.call.cancel()


def hub_config(
    git: fleet.Repo, repos: list[dict[str, Any]], helm: Mapping[str, Any], *, app: str = "shop"
) -> dict[str, Any]:
    cfg = hubproc.hub_yaml(git.url, {app: "apps/shop"})
    cfg["helmRepositories"] = repos
    cfg["apps"][0]["helm"] = dict(helm)
    return cfg


def git_repo(tmp_path: pathlib.Path) -> fleet.Repo:
    git = fleet.Repo.create(tmp_path / "git")
    git.write("apps/shop/values-prod.yaml", {"greeting": "from git"})
    git.commit("values")
    return git


async def configmap(proc: hubproc.HubProc, app: str = "shop") -> dict[str, str]:
    """The data of the ConfigMap in the bundle c1 is assigned for `app`."""
    got = proc.hub.assignment("c1", app)
    assert got is not None
    bundle = types_pb2.Bundle.FromString(await proc.hub.bundle("c1", got.digest))
    docs = [d for m in bundle.manifests for d in yaml.safe_load_all(m.yaml) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return dict(cm["data"])


def render_error(proc: hubproc.HubProc, app: str = "shop") -> str:
    found = next(a for a in proc.hub.snapshot().apps if a.name == app)
    return " ".join(t.render_error for t in found.targets)


async def until_version(proc: hubproc.HubProc, version: str) -> None:
    async def deployed() -> bool:
        return proc.hub.assignment("c1", "shop") is not None and (
            (await configmap(proc)).get("chartVersion") == version
        )

    await wait.until(
        f"chart {version} assigned to c1",
        deployed,
        within=60,
        explain=lambda: render_error(proc) or "no render error",
    )


async def test_a_range_picks_the_newest_match_and_a_new_upstream_version_is_picked_up(
    tmp_path: pathlib.Path,
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as charts:
        for v in ("1.0.0", "1.1.0", "2.0.0", "1.2.0-rc.1"):
            charts.publish(chartrepo.package(tmp_path, "demo", v))
        git = git_repo(tmp_path)
        cfg = hub_config(
            git,
            [{"name": "local", "url": charts.url, "interval": "1s"}],
            {"repo": "local", "chart": "demo", "version": "^1.0", "releaseName": "web",
             "valuesFiles": ["values-prod.yaml"]},
        )  # fmt: skip
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "1.1.0")  # not 2.0.0, not the prerelease
            data = await configmap(proc)
            assert data["greeting"] == "from git"  # values files work on a remote chart
            first = proc.hub.assignment("c1", "shop")
            assert first is not None
            assert "demo 1.1.0 (sha256:" in proc.hub._renders.chart_of(proc.hub.cfg.apps[0])

            charts.publish(chartrepo.package(tmp_path, "demo", "1.3.0"))

            async def picked_up() -> bool:
                proc.hub.trigger_fetch("platform")  # Git polls with no new commit
                return (await configmap(proc)).get("chartVersion") == "1.3.0"

            # the range is resolved again once the repository's interval (1 s) has passed
            await wait.until("chart 1.3.0 picked up by the range", picked_up, every=0.3, within=60)
            second = proc.hub.assignment("c1", "shop")
            assert second is not None and second.revision == first.revision  # Git did not move
            history = await proc.hub.history(app="shop", cluster="c1", limit=10)
            [moved] = [e for e in history if "chart demo 1.3.0 (sha256:" in e.message]
            # the chart moved under the same commit: history names the commit next to it
            assert (moved.author, moved.subject) == ("Fleet Tester", "values")
            assert "auto-sync of a new render of a commit by Fleet Tester" in moved.message
            stored = await proc.hub.db.run(proc.hub.db.renders)
            # the render record keeps the chart the revision ran: repository, version, digest
            (now,) = [r for r in stored if r.app == "shop" and r.revision == first.revision]
            assert now.charts.startswith("local/demo@1.3.0#sha256:")


async def test_basic_auth_from_env_and_bad_credentials_are_the_apps_error_without_the_secret(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-never-shown"
    monkeypatch.setenv("CHARTS_USER", "fleet")
    monkeypatch.setenv("CHARTS_PASSWORD", secret)
    caplog.set_level(logging.DEBUG)
    with chartrepo.http_repo(tmp_path / "repo", auth=f"fleet:{secret}") as charts:
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        git = git_repo(tmp_path)
        entry = {"name": "private", "url": charts.url, "usernameEnv": "CHARTS_USER",
                 "passwordEnv": "CHARTS_PASSWORD"}  # fmt: skip
        cfg = hub_config(git, [entry], {"repo": "private", "chart": "demo", "version": "1.0.0"})
        cfg["apps"].append({"name": "other", "repo": "platform", "path": "apps/shop"})
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "1.0.0")
        monkeypatch.setenv("CHARTS_PASSWORD", "wrong")
        cfg["apps"][0]["helm"]["version"] = "1.0.1"  # not cached: must ask the repository
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.1"))
        async with (
            hubproc.running(tmp_path / "hub2", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until(
                "the bad credentials shown on the app",
                lambda: "credentials were refused" in render_error(proc),
                within=30,
            )
            assert proc.hub.assignment("c1", "shop") is None
            await wait.until(
                "the other app deployed", lambda: proc.revision("c1", "other") != "", within=30
            )
    assert secret not in caplog.text and "wrong" not in render_error(proc)


async def test_a_tampered_archive_is_refused_by_its_index_digest(tmp_path: pathlib.Path) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as charts:
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        evil = chartrepo.package(tmp_path / "evil", "demo", "1.0.0", greeting="evil")
        (charts.dir / "demo-1.0.0.tgz").write_bytes(evil.read_bytes())  # index not rebuilt
        git = git_repo(tmp_path)
        cfg = hub_config(git, [{"name": "local", "url": charts.url}], {"repo": "local",
                         "chart": "demo", "version": "1.0.0"})  # fmt: skip
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until(
                "the digest mismatch shown",
                lambda: "but the index says" in render_error(proc),
                within=30,
            )
            assert proc.hub.assignment("c1", "shop") is None
            cached = list((proc.data / "charts").rglob("*.tgz"))
            assert cached == []  # nothing kept from it


async def test_an_unreachable_repository_keeps_the_last_revision(tmp_path: pathlib.Path) -> None:
    charts = chartrepo.HttpRepo(tmp_path / "repo")
    try:
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        git = git_repo(tmp_path)
        cfg = hub_config(git, [{"name": "local", "url": charts.url, "interval": "1s"}],
                         {"repo": "local", "chart": "demo", "version": "~1.0",
                          "valuesFiles": ["values-prod.yaml"]})  # fmt: skip
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "1.0.0")
            before = proc.hub.assignment("c1", "shop")
            charts.stop()

            def shown() -> bool:
                proc.hub.trigger_fetch("platform")  # polls: the range is due again
                return "cannot reach" in render_error(proc)

            await wait.until("the unreachable repository shown", shown, every=0.3, within=30)
            git.write("apps/shop/values-prod.yaml", {"greeting": "new commit"})
            head = git.commit("values again")
            proc.hub.trigger_fetch("platform")
            await wait.until("the hub sees the commit", lambda: proc.hub.heads["platform"] == head)
            await proc.hub.replan()
            after = proc.hub.assignment("c1", "shop")
            assert after is not None and before is not None
            assert (after.revision, after.digest) == (before.revision, before.digest)
            assert "cannot reach" in render_error(proc)
            assert (await configmap(proc))["greeting"] == "from git"

            charts = chartrepo.HttpRepo(tmp_path / "repo", port=charts.port)  # back up

            async def recovered() -> bool:
                proc.hub.trigger_fetch("platform")  # the failed fetch is retried on polls
                return proc.revision("c1", "shop") == head

            await wait.until("the new commit assigned once the repository is back", recovered,
                             every=0.3, within=30)  # fmt: skip
            assert (await configmap(proc))["greeting"] == "new commit"
            assert render_error(proc) == ""
    finally:
        charts.stop()


async def test_an_exact_cached_version_renders_with_the_repository_down(
    tmp_path: pathlib.Path,
) -> None:
    charts = chartrepo.HttpRepo(tmp_path / "repo")
    try:
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        git = git_repo(tmp_path)
        cfg = hub_config(git, [{"name": "local", "url": charts.url}],
                         {"repo": "local", "chart": "demo", "version": "1.0.0"})  # fmt: skip
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "1.0.0")
            charts.stop()
            git.write("apps/shop/values-prod.yaml", {"greeting": "new commit"})
            head = git.commit("values again")
            proc.hub.trigger_fetch("platform")
            await wait.until("the new commit assigned", lambda: proc.revision("c1", "shop") == head)
    finally:
        charts.stop()


async def test_a_chart_from_an_oci_registry_with_its_manifest_digest(
    tmp_path: pathlib.Path,
) -> None:
    with chartrepo.oci_registry(tmp_path / "oci") as registry:
        for v in ("0.1.0", "0.2.0"):
            pushed = registry.push(chartrepo.package(tmp_path, "demo", v))
        digest = pushed.split("Digest:")[1].split()[0]
        git = git_repo(tmp_path)
        url = f"oci://{registry.host}/charts"
        cfg = hub_config(
            git,
            [{"name": "oci", "url": url, "insecurePlainHttp": True}],
            {"chart": f"{url}/demo", "version": ">=0.1.0 <1.0.0"},
        )
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "0.2.0")
            assert f"demo 0.2.0 ({digest})" in proc.hub._renders.chart_of(proc.hub.cfg.apps[0])
            for f in (proc.data / "charts").rglob("*"):
                assert not f.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO), f  # private


async def test_dependencies_come_from_allowlisted_repositories_only(
    tmp_path: pathlib.Path,
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as charts:
        charts.publish(chartrepo.package(tmp_path, "common", "1.4.0", greeting="sub"))
        git = fleet.Repo.create(tmp_path / "git")
        chartrepo.write_chart(
            git.work / "apps", "shop", "0.1.0",
            dependencies=[{"name": "common", "version": "^1.0", "repository": charts.url}],
        )  # fmt: skip
        chartrepo.write_chart(
            git.work / "apps", "bad", "0.1.0",
            dependencies=[{"name": "evil", "version": "1.0.0",
                           "repository": "https://charts.example.com/stable"}],
        )  # fmt: skip
        git.commit("two charts with dependencies")
        cfg = hubproc.hub_yaml(git.url, {"shop": "apps/shop", "bad": "apps/bad"})
        cfg["helmRepositories"] = [{"name": "local", "url": charts.url}]
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until("shop assigned", lambda: proc.revision("c1", "shop") != "")
            got = proc.hub.assignment("c1", "shop")
            assert got is not None
            bundle = types_pb2.Bundle.FromString(await proc.hub.bundle("c1", got.digest))
            names = {
                d["metadata"]["name"]
                for m in bundle.manifests
                for d in yaml.safe_load_all(m.yaml)
                if d
            }
            assert names == {"shop-shop", "shop-common"}
            await wait.until(
                "the dependency outside the allowlist named",
                lambda: (
                    "dependency evil comes from https://charts.example.com/stable"
                    in render_error(proc, "bad")
                ),
                within=30,
            )
            assert "add a helmRepositories entry" in render_error(proc, "bad")


def test_hub_yaml_refuses_a_chart_outside_the_allowlist_and_names_the_fix() -> None:
    doc = {
        "repos": [{"name": "platform", "url": "https://git.example.com/p.git"}],
        "helmRepositories": [{"name": "ghcr", "url": "oci://ghcr.io/org/charts"}],
        "apps": [{"name": "shop", "repo": "platform", "path": "apps/shop",
                  "helm": {"chart": "oci://quay.io/other/demo", "version": "1.x"}}],
    }  # fmt: skip
    with pytest.raises(errors.ConfigError) as e:
        config.parse(yaml.safe_dump(doc), file="hub.yaml")
    assert "apps[0].helm.chart" in str(e.value)
    assert "add a helmRepositories entry with url oci://quay.io/other" in str(e.value)


@pytest.mark.parametrize(
    ("helm", "says"),
    [
        ({"repo": "r", "chart": "../../etc"}, "expected a chart name"),
        ({"chart": "oci://ghcr.io/org/charts/../../x"}, "expected a chart name"),
        ({"repo": "r", "chart": "oci://ghcr.io/org/charts/x"}, "give either repo"),
        ({"repo": "nope", "chart": "demo"}, "unknown Helm repository 'nope'"),
        ({"chart": "demo", "version": "1.0.0"}, "needs a chart from a repository"),
        ({"chart": "https://x.io/demo-1.0.0.tgz"}, "entry with url https://x.io"),
        ({"chart": "git::https://x.io/charts//demo"}, "a chart URL is not fetched"),
        ({"chart": "https://x.io/d.tgz", "version": "1.x"}, "is one version"),
        ({"repo": "r", "chart": "demo", "releaseName": "Web_1"}, "Helm's rule"),
    ],
)
def test_helm_sources_are_validated(helm: dict[str, str], says: str) -> None:
    doc = {
        "repos": [{"name": "platform", "url": "https://git.example.com/p.git"}],
        "helmRepositories": [{"name": "r", "url": "oci://ghcr.io/org/charts"}],
        "apps": [{"name": "shop", "repo": "platform", "path": "a", "helm": helm}],
    }
    with pytest.raises(errors.ConfigError, match=r"apps\[0\]\.helm") as e:
        config.parse(yaml.safe_dump(doc), file="hub.yaml")
    assert says in str(e.value)


def test_an_oci_chart_anywhere_under_an_allowlisted_path_is_allowed() -> None:
    doc = {
        "repos": [{"name": "platform", "url": "https://git.example.com/p.git"}],
        "helmRepositories": [{"name": "ghcr", "url": "oci://ghcr.io/org/charts"}],
        "apps": [{"name": "shop", "repo": "platform", "path": "a",
                  "helm": {"chart": "oci://ghcr.io/org/charts/team/demo", "version": "~1.2"}}],
    }  # fmt: skip
    app = config.parse(yaml.safe_dump(doc), file="hub.yaml").apps[0]
    assert (app.helm.chart, app.helm.version, app.helm.remote) == (
        "oci://ghcr.io/org/charts/team/demo", "~1.2", True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "field", "says"),
    [
        ({"url": "ftp://x"}, "url", "expected https://"),
        ({"url": "https://u:p@x.io"}, "url", "must not contain credentials"),
        ({"url": "oci://ghcr.io/o", "insecurePlainHttp": True}, "insecurePlainHttp", "loopback"),
        ({"url": "https://x.io", "usernameEnv": "U"}, "", "need both a username"),
    ],
)
def test_helm_repositories_are_validated(entry: dict[str, Any], field: str, says: str) -> None:
    doc = {"helmRepositories": [{"name": "r", **entry}]}
    with pytest.raises(errors.ConfigError) as e:
        config.parse(yaml.safe_dump(doc), file="hub.yaml")
    assert f"helmRepositories[0]{'.' + field if field else ''}" in str(e.value)
    assert says in str(e.value)


def test_a_bad_version_range_names_the_field() -> None:
    doc = {
        "repos": [{"name": "platform", "url": "https://git.example.com/p.git"}],
        "helmRepositories": [{"name": "r", "url": "https://charts.example.com"}],
        "apps": [{"name": "shop", "repo": "platform", "path": "a",
                  "helm": {"repo": "r", "chart": "demo", "version": "latest"}}],
    }  # fmt: skip
    with pytest.raises(errors.ConfigError, match=r"apps\[0\]\.helm\.version.*e\.g\."):
        config.parse(yaml.safe_dump(doc), file="hub.yaml")


async def test_fleet_yaml_helm_repo_is_matched_against_the_allowlist_by_url(
    tmp_path: pathlib.Path,
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as charts:
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        git = fleet.Repo.create(tmp_path / "git")
        git.write("apps/shop/fleet.yaml", {"defaultNamespace": "shop", "helm": {
            "repo": charts.url + "/", "chart": "demo", "version": "1.0.0",
            "releaseName": "web", "values": {"greeting": "fleet"}}})  # fmt: skip
        git.write("apps/byurl/fleet.yaml", {"defaultNamespace": "byurl", "helm": {
            "chart": charts.url + "/demo-1.0.0.tgz"}})  # fmt: skip
        git.write("apps/stray/fleet.yaml", {"helm": {
            "repo": "https://charts.example.com/stable", "chart": "demo"}})  # fmt: skip
        git.commit("fleet.yaml apps")
        cfg = hubproc.hub_yaml(
            git.url, {"shop": "apps/shop", "stray": "apps/stray", "byurl": "apps/byurl"}
        )
        cfg["helmRepositories"] = [{"name": "local", "url": charts.url}]
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "1.0.0")
            got = proc.hub.assignment("c1", "shop")
            assert got is not None
            bundle = types_pb2.Bundle.FromString(await proc.hub.bundle("c1", got.digest))
            cm = next(d for d in yaml.safe_load_all(bundle.manifests[0].yaml) if d)
            assert cm["metadata"]["name"] == "web-demo"  # helm.releaseName
            assert cm["data"]["greeting"] == "fleet"
            await wait.until(
                "the stray repository named with the fix",
                lambda: (
                    "add a helmRepositories entry with url https://charts.example.com/stable"
                    in render_error(proc, "stray")
                ),
                within=30,
            )
            assert proc.hub.assignment("c1", "stray") is None
            # Fleet's other form: the URL of a chart archive under an allowlisted url
            await wait.until("byurl assigned", lambda: proc.revision("c1", "byurl") != "",
                             within=30, explain=lambda: render_error(proc, "byurl"))  # fmt: skip
            assert "chart demo 1.0.0 (sha256:" in proc.hub._renders.chart_of(
                proc.hub._specs.effective(proc.hub.cfg.apps[2])
            )


async def test_an_oci_registry_with_credentials_from_files_and_the_password_nowhere_else(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "oci-pass-never-shown"
    caplog.set_level(logging.DEBUG)
    with chartrepo.oci_registry(tmp_path / "oci", auth=f"fleet:{secret}") as registry:
        registry.push(chartrepo.package(tmp_path, "demo", "1.0.0"))
        (tmp_path / "user").write_text("fleet\n")
        (tmp_path / "password").write_text(secret + "\n")
        git = git_repo(tmp_path)
        url = f"oci://{registry.host}/charts"
        entry = {"name": "oci", "url": url, "insecurePlainHttp": True,
                 "usernameFile": str(tmp_path / "user"),
                 "passwordFile": str(tmp_path / "password")}  # fmt: skip
        cfg = hub_config(git, [entry], {"chart": f"{url}/demo", "version": "^1"})
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await until_version(proc, "1.0.0")
        (tmp_path / "password").write_text("wrong\n")
        async with (
            hubproc.running(tmp_path / "hub2", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until(
                "the refused login shown on the app",
                lambda: "helm pull" in render_error(proc) and "401" in render_error(proc),
                within=30,
                explain=lambda: render_error(proc),
            )
            assert proc.hub.assignment("c1", "shop") is None
    assert secret not in caplog.text


async def test_a_redirect_to_another_host_never_carries_the_repository_credentials(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTS_USER", "fleet")
    monkeypatch.setenv("CHARTS_PASSWORD", "pw")
    with (
        chartrepo.http_repo(tmp_path / "repo", auth="fleet:pw") as charts,
        chartrepo.http_repo(tmp_path / "elsewhere") as elsewhere,
    ):
        tgz = chartrepo.package(tmp_path, "demo", "1.0.0")
        charts.publish(tgz)
        elsewhere.publish(tgz)
        charts.redirects["/demo-1.0.0.tgz"] = f"{elsewhere.url}/demo-1.0.0.tgz"
        git = git_repo(tmp_path)
        entry = {"name": "private", "url": charts.url, "usernameEnv": "CHARTS_USER",
                 "passwordEnv": "CHARTS_PASSWORD"}  # fmt: skip
        cfg = hub_config(git, [entry], {"repo": "private", "chart": "demo", "version": "1.0.0"})
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until(
                "the redirect refused",
                lambda: "refused with credentials attached" in render_error(proc),
                within=30,
                explain=lambda: render_error(proc),
            )
            assert proc.hub.assignment("c1", "shop") is None
        assert [a for a in elsewhere.seen if a] == []  # the other host never saw them


async def test_a_remote_chart_lacking_its_dependencies_gets_them_from_the_allowlist(
    tmp_path: pathlib.Path,
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as charts:
        charts.publish(chartrepo.package(tmp_path, "common", "1.2.0", greeting="sub"))
        dep = [{"name": "common", "version": "~1.2", "repository": charts.url}]
        charts.publish(
            chartrepo.archive_without_dependencies(tmp_path, "demo", "1.0.0", dependencies=dep)
        )
        git = git_repo(tmp_path)
        cfg = hub_config(git, [{"name": "local", "url": charts.url}],
                         {"repo": "local", "chart": "demo", "version": "1.0.0"})  # fmt: skip
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until(
                "shop assigned", lambda: proc.revision("c1", "shop") != "", within=30,
                explain=lambda: render_error(proc),
            )  # fmt: skip
            got = proc.hub.assignment("c1", "shop")
            assert got is not None
            bundle = types_pb2.Bundle.FromString(await proc.hub.bundle("c1", got.digest))
            names = {d["metadata"]["name"] for m in bundle.manifests
                     for d in yaml.safe_load_all(m.yaml) if d}  # fmt: skip
            assert names == {"shop-demo", "shop-common"}
            stored = await proc.hub.db.run(proc.hub.db.renders)
            (render,) = [r for r in stored if r.app == "shop"]
            assert "local/common@1.2.0#sha256:" in render.charts
