"""Ignore rules end to end: hub.yaml `ignoreDifferences` and fleet.yaml `diff.comparePatches`
go from the hub in the bundle to a real agent, which then neither reports nor heals a
Deployment's replicas that someone scaled, while a Deployment without a rule is healed.
A hub process, an agent process, a Git repository and a local cluster, all real."""

from __future__ import annotations

import pathlib
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


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
            },
        },
    }


def configmap(name: str, color: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"color": color},
    }


class World:
    def __init__(self, root: pathlib.Path, cluster: localkube.LocalCluster) -> None:
        self.prefix = f"i{uuid.uuid4().hex[:6]}"
        self.root = root
        self.cluster = cluster
        self.repo = fleet.Repo.create(root / "git")
        self.hub: fleet.Hub | None = None
        self.agent: fleet.Process | None = None

    @property
    def web(self) -> str:  # the hub.yaml app, and its namespace
        return f"{self.prefix}-web"

    @property
    def flt(self) -> str:  # the fleet.yaml app, and its namespace
        return f"{self.prefix}-fleet"

    def write(self, color: str) -> None:
        self.repo.write("apps/web/web.yaml", deployment("web", 2))
        self.repo.write("apps/web/plain.yaml", deployment("plain", 2))
        self.repo.write("apps/web/cm.yaml", configmap("web-config", color))
        self.repo.write("apps/fleet/api.yaml", deployment("api", 2))
        self.repo.write("apps/fleet/cm.yaml", configmap("api-config", color))
        self.repo.write(
            "apps/fleet/fleet.yaml",
            {
                "defaultNamespace": self.flt,
                "diff": {
                    "comparePatches": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": "api",
                            "namespace": self.flt,
                            "operations": [{"op": "remove", "path": "/spec/replicas"}],
                        }
                    ]
                },
            },
        )

    def config(self) -> dict[str, Any]:
        sync = {"auto": True, "prune": True, "selfHeal": True}
        return {
            "repos": [{"name": "platform", "url": self.repo.url, "pollInterval": "1s"}],
            "clusters": [{"name": "c1", "labels": {"env": "dev"}}],
            "apps": [
                {
                    "name": self.web,
                    "repo": "platform",
                    "path": "apps/web",
                    "namespace": self.web,
                    "sync": sync,
                    "ignoreDifferences": [
                        {
                            "group": "apps",
                            "kind": "Deployment",
                            "name": "web",
                            "jsonPointers": ["/spec/replicas"],
                        }
                    ],
                },
                {
                    "name": self.flt,
                    "repo": "platform",
                    "path": "apps/fleet",
                    "namespace": self.flt,
                    "sync": sync,
                },
            ],
        }

    def kubectl(self, *args: str) -> str:
        done = subprocess.run(
            [localkube.binary("kubectl"), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def replicas(self, ns: str, name: str) -> int:
        got = self.kubectl("-n", ns, "get", "deployment", name, "-o", "jsonpath={.spec.replicas}")
        return int(got)

    def logs(self) -> str:
        hub = self.hub.process.tail() if self.hub else ""
        agent = self.agent.tail() if self.agent else ""
        return f"--- hub\n{hub}\n--- agent\n{agent}"

    def cells(self) -> dict[tuple[str, str], Any]:
        assert self.hub is not None
        return self.hub.fleet().cells()

    def wait_synced(self, rev: str, what: str) -> None:
        want = {("c1", self.web): rev, ("c1", self.flt): rev}
        wait.until_sync(
            what,
            lambda: fleet.converged(self.cells(), want),
            within=120,
            retry_on=(grpc.RpcError,),
            explain=lambda: fleet.describe(self.cells()) + "\n" + self.logs(),
        )


@pytest.fixture(scope="module")
def world(
    local_clusters: list[localkube.LocalCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ignore")
    w = World(root, local_clusters[0])
    w.write("blue")
    w.repo.commit("first")
    config = root / "hub.yaml"
    config.write_text(yaml.safe_dump(w.config(), sort_keys=False))
    w.hub = fleet.start_hub(config, root / "hub-data")
    try:
        w.agent = fleet.start_agent(w.hub, w.hub.fleet().token("c1"), w.cluster, root / "agent")
        yield w
    finally:
        if w.agent is not None:
            w.agent.stop()
        w.hub.process.stop()


def test_scaled_replicas_under_an_ignore_rule_stay_while_the_rest_is_healed(
    world: World,
) -> None:
    head = fleet.git(world.repo.work, "rev-parse", "HEAD")
    world.wait_synced(head, "both apps synced at the first commit")
    for ns, name in ((world.web, "web"), (world.web, "plain"), (world.flt, "api")):
        world.kubectl("-n", ns, "scale", f"deployment/{name}", "--replicas=5")
    world.kubectl(
        "-n", world.flt, "patch", "configmap", "api-config", "-p", '{"data":{"color":"x"}}'
    )

    # what has no rule is healed: `plain` back to Git's 2, the fleet app's ConfigMap to blue
    def color() -> str:
        return world.kubectl(
            "-n", world.flt, "get", "configmap", "api-config", "-o", "jsonpath={.data.color}"
        )

    wait.until_sync(
        "self-heal of what no rule covers",
        lambda: world.replicas(world.web, "plain") == 2 and color() == "blue",
        within=60,
        explain=world.logs,
    )
    # a heal pass of both apps has happened since; the ignored replicas were left alone
    wait.until_sync(
        "both apps reported Synced after the scale",
        lambda: fleet.converged(world.cells(), {("c1", world.web): head, ("c1", world.flt): head}),
        within=60,
        explain=lambda: fleet.describe(world.cells()) + "\n" + world.logs(),
    )
    assert world.replicas(world.web, "web") == 5
    assert world.replicas(world.flt, "api") == 5
    cells = world.cells()
    for app in (world.web, world.flt):
        cell = cells[("c1", app)]
        assert cell.sync == types_pb2.SYNC_STATUS_SYNCED, cell.reason
        assert all(not r.drift for r in cell.resources), [
            (r.ref.name, list(r.drift)) for r in cell.resources
        ]


def test_a_new_revision_is_applied_and_keeps_the_ignored_replicas(world: World) -> None:
    world.write("green")
    rev = world.repo.commit("second: green")
    world.wait_synced(rev, "both apps synced at the second commit")
    got = world.kubectl(
        "-n", world.flt, "get", "configmap", "api-config", "-o", "jsonpath={.data.color}"
    )
    assert got == "green"
    assert world.replicas(world.web, "web") == 5
    assert world.replicas(world.flt, "api") == 5
    assert world.replicas(world.web, "plain") == 2
