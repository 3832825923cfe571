"""Third-party charts on a real cluster: a hub process deploys a chart from a real HTTP chart
repository (`helm repo index` on loopback) and one from a real OCI registry (docker-registry,
`helm push`) through an agent process to a local cluster; a new chart version published
upstream is picked up by the app's range; with the repository down the cluster keeps what it
runs and the app says why."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import grpc
import pytest
import yaml

from tests import localkube
from tests.support import chartrepo, fleet, wait

pytestmark = pytest.mark.cluster


def kubectl(cluster: localkube.LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def chart_version(cluster: localkube.LocalCluster, ns: str, name: str) -> str:
    got = kubectl(cluster, "-n", ns, "get", "configmap", name, "-o",
                  "jsonpath={.data.chartVersion}")  # fmt: skip
    return got.stdout if got.returncode == 0 else ""


def errors_of(client: fleet.FleetClient, app: str) -> str:
    found = [a for a in client.snapshot().apps if a.name == app]
    return " ".join(t.render_error for a in found for t in a.targets)


def test_charts_from_a_repository_and_a_registry_reach_the_cluster_and_follow_their_range(
    tmp_path: pathlib.Path, local_clusters: list[localkube.LocalCluster], unique_name: str
) -> None:
    cluster = local_clusters[0]
    web, cache = f"{unique_name}-web", f"{unique_name}-cache"
    with (
        chartrepo.http_repo(tmp_path / "repo") as charts,
        chartrepo.oci_registry(tmp_path / "oci") as registry,
    ):
        charts.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        registry.push(chartrepo.package(tmp_path / "o", "kv", "0.3.0"))
        git = fleet.Repo.create(tmp_path / "git")
        git.write("apps/web/values.yaml", {"greeting": "from git"})
        git.write("apps/cache/.keep", "")
        git.commit("apps from chart repositories")
        oci = f"oci://{registry.host}/charts"
        cfg: dict[str, Any] = {
            "repos": [{"name": "platform", "url": git.url, "pollInterval": "1s"}],
            "helmRepositories": [
                {"name": "local", "url": charts.url, "interval": "1s"},
                {"name": "registry", "url": oci, "insecurePlainHttp": True},
            ],
            "apps": [
                {"name": web, "repo": "platform", "path": "apps/web", "namespace": web,
                 "helm": {"repo": "local", "chart": "demo", "version": "^1.0",
                          "valuesFiles": ["values.yaml"]}},
                {"name": cache, "repo": "platform", "path": "apps/cache", "namespace": cache,
                 "helm": {"chart": f"{oci}/kv", "version": "0.3.0"}},
            ],
        }  # fmt: skip
        config = tmp_path / "hub.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        kubectl(cluster, "create", "namespace", web)
        kubectl(cluster, "create", "namespace", cache)
        hub = fleet.start_hub(config, tmp_path / "hub-data")
        agent = None
        try:
            client = hub.fleet()
            agent = fleet.start_agent(hub, client.token(cluster.name), cluster, tmp_path / "agent")
            logs = lambda: hub.process.tail() + "\n" + agent.tail()  # noqa: E731
            wait.until_sync(
                "demo 1.0.0 in the cluster",
                lambda: chart_version(cluster, web, f"{web}-demo") == "1.0.0",
                within=90, explain=logs,
            )  # fmt: skip
            wait.until_sync(
                "kv 0.3.0 from the OCI registry in the cluster",
                lambda: chart_version(cluster, cache, f"{cache}-kv") == "0.3.0",
                within=90, explain=logs,
            )  # fmt: skip
            greeting = kubectl(cluster, "-n", web, "get", "configmap", f"{web}-demo", "-o",
                               "jsonpath={.data.greeting}").stdout  # fmt: skip
            assert greeting == "from git"

            charts.publish(chartrepo.package(tmp_path / "next", "demo", "1.1.0"))
            wait.until_sync(
                "demo 1.1.0 picked up by ^1.0 without a Git commit",
                lambda: chart_version(cluster, web, f"{web}-demo") == "1.1.0",
                within=90, explain=logs,
            )  # fmt: skip
            history = client.history(app=web, cluster=cluster.name)
            assert any("chart demo 1.1.0 (sha256:" in e.message for e in history)

            charts.stop()
            git.write("apps/web/values.yaml", {"greeting": "after the outage"})
            git.commit("new values while the chart repository is down")
            wait.until_sync(
                "the unreachable repository shown on the app",
                lambda: "cannot reach" in errors_of(client, web),
                within=60, retry_on=(grpc.RpcError,), explain=logs,
            )  # fmt: skip
            assert chart_version(cluster, web, f"{web}-demo") == "1.1.0"
            greeting = kubectl(cluster, "-n", web, "get", "configmap", f"{web}-demo", "-o",
                               "jsonpath={.data.greeting}").stdout  # fmt: skip
            assert greeting == "from git"  # the last good revision stays
            assert chart_version(cluster, cache, f"{cache}-kv") == "0.3.0"  # untouched
        finally:
            if agent is not None:
                agent.stop()
            hub.process.stop()
            kubectl(cluster, "delete", "namespace", web, cache, "--wait=false")
