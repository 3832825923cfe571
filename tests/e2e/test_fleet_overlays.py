"""Rancher Fleet's multi-cluster raw-YAML example, unchanged but for its namespace, on a real
fleet: the fixture committed to a Git repository, a hub process, agents on the three local
clusters labelled env=dev, test and prod, and per cluster the live objects Fleet's docs promise.
Pods need not run (the images exist nowhere): the claims are about the objects' specs.

A second app in the same repository has a top-level `yaml.overlays` every cluster gets, and a
prod overlay whose patch has no base file: prod reports that, naming the patch, and nothing
else is held back."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml

from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.support import fleet, wait

pytestmark = pytest.mark.cluster
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "fleet-multi-cluster"
ENVS = {"c1": "dev", "c2": "test", "c3": "prod"}
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: info}\n"


@dataclasses.dataclass
class Example:
    clusters: dict[str, localkube.LocalCluster]
    ns: str  # the example's app and namespace; the second app's are ns + "-x"
    client: fleet.FleetClient


def kubectl(cluster: localkube.LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def live(cluster: localkube.LocalCluster, ns: str) -> dict[str, dict[str, Any]]:
    """The example's Deployments and Services in `ns`, by kind/name."""
    res = kubectl(cluster, "-n", ns, "get", "deployments,services", "-o", "json")
    assert res.returncode == 0, res.stderr
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in json.loads(res.stdout)["items"]}


@pytest.fixture(scope="module")
def example(
    local_clusters: list[localkube.LocalCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    root = tmp_path_factory.mktemp("fleet-overlays")
    ns = f"mc{uuid.uuid4().hex[:8]}"
    repo = fleet.Repo.create(root / "git")
    shutil.copytree(EXAMPLE, repo.work / "examples/multi-cluster")
    fleet_yaml = repo.work / "examples/multi-cluster/fleet.yaml"
    doc = yaml.safe_load(fleet_yaml.read_text())
    doc["namespace"] = ns  # a namespace no other test uses
    fleet_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))
    extra = f"{ns}-x"
    repo.write("examples/extra/cm.yaml", CM)
    repo.write("examples/extra/fleet.yaml", {
        "namespace": extra,
        "yaml": {"overlays": ["common"]},
        "targetCustomizations": [{"name": "prod", "clusterSelector": {
            "matchLabels": {"env": "prod"}}, "yaml": {"overlays": ["broken"]}}],
    })  # fmt: skip
    repo.write("examples/extra/overlays/common/cm_patch.yaml", "data: {common: 'yes'}\n")
    repo.write("examples/extra/overlays/broken/typo_patch.yaml", "data: {prod: 'yes'}\n")
    rev = repo.commit("Fleet's multi-cluster manifests example")
    config = root / "hub.yaml"
    config.write_text(yaml.safe_dump({
        "repos": [{"name": "examples", "url": repo.url, "branch": "main", "pollInterval": "1s"}],
        "clusters": [{"name": c, "labels": {"env": env}} for c, env in ENVS.items()],
        "apps": [{"name": ns, "repo": "examples", "path": "examples/multi-cluster",
                  "namespace": ns, "sync": {"auto": True, "prune": True}},
                 {"name": extra, "repo": "examples", "path": "examples/extra",
                  "namespace": extra, "sync": {"auto": True, "prune": True}}],
    }, sort_keys=False))  # fmt: skip
    hub = fleet.start_hub(config, root / "hub-data")
    clusters = {c.name: c for c in local_clusters}
    agents: list[fleet.Process] = []
    try:
        client = hub.fleet()
        for name in ENVS:
            agents.append(
                fleet.start_agent(hub, client.token(name), clusters[name], root / f"agent-{name}")
            )

        def applied() -> bool:
            cells = client.cells()
            return all(
                (c := cells.get((cluster, ns))) is not None
                and c.applied_revision == rev
                and c.sync == types_pb2.SYNC_STATUS_SYNCED
                for cluster, app in [*((c, ns) for c in ENVS), ("c1", extra), ("c2", extra)]
            )

        wait.until_sync(
            f"the example at {rev[:8]} applied and in sync on every cluster",
            applied,
            within=120,
            retry_on=(grpc.RpcError,),
            explain=lambda: "\n".join(
                [fleet.describe(client.cells()), hub.process.tail()] + [a.tail() for a in agents]
            ),
        )
        yield Example(clusters, ns, client)
    finally:
        for a in agents:
            a.stop()
        hub.process.stop()
        for cluster in clusters.values():
            for name in (ns, extra):
                kubectl(cluster, "delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_dev_has_no_redis_replica_and_its_replica_service_selects_the_master(
    example: Example,
) -> None:
    clusters, ns = example.clusters, example.ns
    dev = live(clusters["c1"], ns)
    assert "Deployment/redis-replica" not in dev
    assert dev["Service/redis-replica"]["spec"]["selector"] == {"app": "redis", "role": "master"}
    assert dev["Deployment/frontend"]["spec"]["replicas"] == 1
    assert dev["Service/frontend"]["spec"]["type"] == "NodePort"


def test_test_runs_three_frontends(
    example: Example,
) -> None:
    clusters, ns = example.clusters, example.ns
    test = live(clusters["c2"], ns)
    assert test["Deployment/frontend"]["spec"]["replicas"] == 3
    assert test["Service/frontend"]["spec"]["type"] == "NodePort"
    assert test["Deployment/redis-replica"]["spec"]["replicas"] == 2
    assert test["Service/redis-replica"]["spec"]["selector"]["role"] == "replica"


def test_prod_runs_three_frontends_behind_a_load_balancer(
    example: Example,
) -> None:
    clusters, ns = example.clusters, example.ns
    prod = live(clusters["c3"], ns)
    assert prod["Deployment/frontend"]["spec"]["replicas"] == 3
    assert prod["Service/frontend"]["spec"]["type"] == "LoadBalancer"
    assert "Deployment/redis-replica" in prod


def test_top_level_overlays_reach_every_cluster_and_a_missing_base_holds_only_prod(
    example: Example,
) -> None:
    extra = f"{example.ns}-x"
    for cluster in ("c1", "c2"):
        res = kubectl(example.clusters[cluster], "-n", extra, "get", "configmap", "settings",
                      "-o", "jsonpath={.data}")  # fmt: skip
        assert json.loads(res.stdout) == {"level": "info", "common": "yes"}, res.stderr

    def render_errors() -> dict[str, str] | None:
        [app] = [a for a in example.client.snapshot().apps if a.name == extra]
        errors = {t.name: t.render_error for t in app.targets}
        return errors if errors.get("prod") else None

    errors = wait.until_sync("prod's render error in the snapshot", render_errors, within=30)
    assert errors["default"] == ""
    assert errors["prod"].startswith(
        "examples/extra/overlays/broken/typo_patch.yaml: patches examples/extra/typo.yaml, "
        "which does not exist"
    ), errors
    absent = kubectl(example.clusters["c3"], "-n", extra, "get", "configmap", "settings")
    assert absent.returncode != 0
