"""Custom health checks end to end: a Lua check in hub.yaml `healthChecks` travels in the
bundle to a real agent, which reports the script's verdict for a custom resource on a real
cluster, and re-assesses it as the live status changes. The same app holds a Pod with
restartPolicy Never, whose live status (written through the status subresource: the local
clusters run no kubelet) follows Argo CD's rules: Progressing while it runs, even when ready;
Degraded with the reason once it fails."""

from __future__ import annotations

import json
import pathlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml

from fleetops.proto.v1 import fleet_pb2, types_pb2
from tests import localkube
from tests.support import fleet, wait

pytestmark = pytest.mark.cluster
CLUSTER = "c1"
IMAGE = "registry.local/migrate:1"

WIDGET_CHECK = """\
local status = obj.status or {}
if status.phase == nil then
  return {status = "Progressing", message = "widget not picked up yet"}
end
if status.phase == "Broken" then
  return {status = "Degraded", message = "widget broken: " .. (status.detail or "no detail")}
end
return {status = "Healthy", message = "widget " .. status.phase}
"""


def crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


class World:
    def __init__(self, root: pathlib.Path, cluster: localkube.LocalCluster) -> None:
        self.root = root
        self.cluster = cluster
        self.prefix = f"h{uuid.uuid4().hex[:6]}"
        self.group = f"{self.prefix}.health.fleetops.test"
        self.app = self.ns = f"{self.prefix}-widgets"
        self.repo = fleet.Repo.create(root / "git")
        self.hub: fleet.Hub | None = None
        self.agent: fleet.Process | None = None

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [localkube.binary("kubectl"), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def patch_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        res = self.kubectl(
            "-n", self.ns, "patch", kind, name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr

    def cell(self) -> fleet_pb2.ClusterAppStatus | None:
        assert self.hub is not None
        return self.hub.fleet().cells().get((CLUSTER, self.app))

    def resource(self, kind: str, name: str) -> types_pb2.ResourceStatus | None:
        cell = self.cell()
        if cell is None:
            return None
        return next((r for r in cell.resources if (r.ref.kind, r.ref.name) == (kind, name)), None)

    def reported(self, kind: str, name: str, health: int, words: str) -> bool:
        r = self.resource(kind, name)
        return r is not None and r.health == health and words in r.message

    def logs(self) -> str:
        hub = self.hub.process.tail() if self.hub else ""
        agent = self.agent.tail() if self.agent else ""
        cell = self.cell() if self.hub else None
        rows = "\n".join(
            f"{r.ref.kind}/{r.ref.name}: {types_pb2.HealthStatus.Name(r.health)} {r.message}"
            for r in (cell.resources if cell else [])
        )
        return f"--- resources\n{rows}\n--- hub\n{hub}\n--- agent\n{agent}"

    def wait_for(self, kind: str, name: str, health: int, words: str) -> None:
        wait.until_sync(
            f"{kind}/{name} reported {types_pb2.HealthStatus.Name(health)} ({words!r})",
            lambda: self.reported(kind, name, health, words),
            within=90,
            retry_on=(grpc.RpcError,),
            explain=self.logs,
        )


@pytest.fixture(scope="module")
def world(
    local_clusters: list[localkube.LocalCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    cluster = next(c for c in local_clusters if c.name == CLUSTER)
    w = World(tmp_path_factory.mktemp("custom-health"), cluster)
    w.repo.write("apps/widgets/crd.yaml", crd(w.group))
    w.repo.write(
        "apps/widgets/widget.yaml",
        {"apiVersion": f"{w.group}/v1", "kind": "Widget", "metadata": {"name": "gear"},
         "spec": {"size": 3}},
    )  # fmt: skip
    w.repo.write(
        "apps/widgets/migrate.yaml",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "migrate"},
         "spec": {"restartPolicy": "Never",
                  "containers": [{"name": "migrate", "image": IMAGE}]}},
    )  # fmt: skip
    w.repo.commit("widgets with a Lua-checked custom resource")
    config = w.root / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repos": [{"name": "r", "url": w.repo.url, "pollInterval": "1s"}],
                "clusters": [{"name": CLUSTER, "labels": {"env": "dev"}}],
                "healthChecks": [{"group": w.group, "kind": "Widget", "lua": WIDGET_CHECK}],
                "apps": [
                    {
                        "name": w.app,
                        "repo": "r",
                        "path": "apps/widgets",
                        "namespace": w.ns,
                        "sync": {"auto": True, "prune": True, "selfHeal": True},
                    }
                ],
            }
        )
    )
    try:
        w.hub = fleet.start_hub(config, w.root / "hub-data")
        token = w.hub.fleet().token(CLUSTER)
        w.agent = fleet.start_agent(w.hub, token, cluster, w.root / "agent")
        yield w
    finally:
        if w.agent is not None:
            w.agent.stop()
        if w.hub is not None:
            w.hub.process.stop()
        w.kubectl("delete", "namespace", w.ns, "--wait=false", "--ignore-not-found")
        w.kubectl("delete", "crd", f"widgets.{w.group}", "--wait=false", "--ignore-not-found")


def test_the_hub_lua_check_decides_a_custom_resource(world: World) -> None:
    # the built-in rule would call a Widget without conditions Healthy ("exists")
    world.wait_for("Widget", "gear", types_pb2.HEALTH_STATUS_PROGRESSING, "not picked up yet")
    world.patch_status(
        f"widgets.{world.group}", "gear", {"phase": "Broken", "detail": "gear jammed"}
    )
    world.wait_for("Widget", "gear", types_pb2.HEALTH_STATUS_DEGRADED, "widget broken: gear jammed")
    cell = world.cell()
    assert cell is not None and cell.health == types_pb2.HEALTH_STATUS_DEGRADED
    world.patch_status(f"widgets.{world.group}", "gear", {"phase": "Spinning"})
    world.wait_for("Widget", "gear", types_pb2.HEALTH_STATUS_HEALTHY, "widget Spinning")


def test_a_never_restarting_pod_is_progressing_until_it_ends(world: World) -> None:
    world.wait_for("Pod", "migrate", types_pb2.HEALTH_STATUS_PROGRESSING, "")
    running = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "migrate", "ready": True, "restartCount": 0, "image": IMAGE,
             "imageID": "", "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}}
        ],
    }  # fmt: skip
    world.patch_status("pod", "migrate", running)
    # ready, but a run-once pod is only done when it completes (what a hook waits for)
    world.wait_for("Pod", "migrate", types_pb2.HEALTH_STATUS_PROGRESSING, "restartPolicy Never")
    failed = {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [
            {"name": "migrate", "ready": False, "restartCount": 0, "image": IMAGE,
             "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                                     "startedAt": "2026-11-26T10:00:00Z",
                                                     "finishedAt": "2026-11-26T10:01:00Z"}}}
        ],
    }  # fmt: skip
    world.patch_status("pod", "migrate", failed)
    world.wait_for("Pod", "migrate", types_pb2.HEALTH_STATUS_DEGRADED, "OOMKilled")
