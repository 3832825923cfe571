"""Progressive delivery for real: a Git repository, a hub process, three agent processes on
the three local clusters (c1 the canary, c2 and c3 prod), an app rolled out canary first,
and a real Prometheus scraping an exporter this test controls per cluster.

Tests in this module run in order against one fleet: a good commit reaches prod only after
the canary baked Healthy; a bad commit (a nodeSelector no node matches: never Available)
fails the canary at its deadline, the canary goes back, prod never sees it, auto-sync does not
take it again, and the next good commit rolls fresh; the canary's 10% error rate fails the
Prometheus gate and reverts; an offline prod cluster is Deferred and catches up when back;
the hub killed mid-bake resumes with the bake clock."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml

from fleetops.proto.v1 import fleet_pb2, types_pb2
from tests import localkube
from tests.support import exporter, fleet, prometheus, wait

pytestmark = pytest.mark.cluster
ROLES = {"c1": "canary", "c2": "prod", "c3": "prod"}
BAKE = 8  # seconds the canary bakes Healthy before prod starts
DEADLINE = 25  # seconds from assignment to Healthy before a cluster fails


@dataclasses.dataclass
class World:
    repo: fleet.Repo
    hub: fleet.Hub
    config: pathlib.Path
    agents: dict[str, fleet.Process]
    clusters: dict[str, localkube.LocalCluster]
    app: str
    root: pathlib.Path
    metrics: exporter.Exporter
    prom: prometheus.Prometheus
    good: str = ""

    def client(self) -> fleet.FleetClient:
        return self.hub.fleet()

    def logs(self) -> str:
        parts = [f"--- hub\n{self.hub.process.tail()}"]
        parts += [f"--- agent {c}\n{p.tail()}" for c, p in self.agents.items()]
        return "\n".join(parts)

    def rollout(self) -> fleet_pb2.Rollout:
        stub = self.client()
        got = stub.stub.RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app=self.app), metadata=stub.meta, timeout=30
        )
        return got.rollouts[0]

    def action(self, action: str) -> str:
        stub = self.client()
        got = stub.stub.RolloutAction(
            fleet_pb2.RolloutActionRequest(app=self.app, action=action),
            metadata=stub.meta,
            timeout=30,
        )
        return got.message

    def desired(self) -> dict[str, str]:
        """cluster -> the revision assigned to it ('' when nothing is)."""
        return {
            c: cell.desired_revision if cell.desired_bundle else ""
            for (c, a), cell in self.client().cells().items()
            if a == self.app
        }

    def applied_healthy(self, cluster: str, rev: str) -> bool:
        cell = self.client().cells().get((cluster, self.app))
        return (
            cell is not None
            and cell.applied_revision == rev
            and cell.health == types_pb2.HEALTH_STATUS_HEALTHY
        )

    def commit(self, message: str, *, good: bool, version: str) -> str:
        write_app(self.repo, version=version, good=good)
        return self.repo.commit(message)

    def explain(self) -> str:
        r = self.rollout()
        lines = [f"rollout {r.revision[:8]} {r.phase}: {r.reason}"]
        lines += [f"  {c.cluster} {c.phase}: {c.reason}" for c in r.clusters]
        lines.append(f"desired: { {c: v[:8] for c, v in self.desired().items()} }")
        return "\n".join(lines) + "\n" + self.logs()[-6000:]


def deployment(version: str, *, good: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": f"registry.local/web:{version}"}]
    }
    if not good:  # no node has this label: the pod never schedules, never Available
        spec["nodeSelector"] = {"fleetops.io/no-such-node": "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
        },
    }


def write_app(repo: fleet.Repo, *, version: str, good: bool) -> None:
    repo.write("apps/web/deployment.yaml", deployment(version, good=good))
    repo.write(
        "apps/web/configmap.yaml",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"},
         "data": {"version": version}},
    )  # fmt: skip


def hub_config(world_repo: fleet.Repo, app: str, prom_url: str) -> dict[str, Any]:
    return {
        "repos": [{"name": "platform", "url": world_repo.url, "pollInterval": "1s"}],
        "clusters": [{"name": c, "labels": {"role": r}} for c, r in ROLES.items()],
        "clusterGroups": [
            {"name": "canary", "selector": {"matchLabels": {"role": "canary"}}},
            {"name": "prod", "selector": {"matchLabels": {"role": "prod"}}},
        ],
        "gates": [
            {
                "name": "error-rate",
                "prometheus": {
                    "url": prom_url,
                    "query": 'sum(rate(http_requests_total{cluster="{{cluster}}",code="500"}[5s]))'
                    ' / sum(rate(http_requests_total{cluster="{{cluster}}"}[5s]))',
                    "pass": "< 0.05",
                    "interval": "1s",
                    "failureLimit": 2,
                    "noData": "wait",
                },
            }
        ],
        "apps": [
            {
                "name": app,
                "repo": "platform",
                "path": "apps/web",
                "namespace": app,
                "sync": {"auto": True, "prune": True, "selfHeal": True},
                "rollout": {
                    "steps": [
                        {"name": "canary", "clusterGroup": "canary", "bake": f"{BAKE}s",
                         "gates": ["error-rate"]},
                        {"name": "prod", "clusterGroup": "prod", "maxParallel": 1},
                    ],
                    "progressDeadline": f"{DEADLINE}s",
                    "onFailure": "revert",
                },
            }
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def world(
    local_clusters: list[localkube.LocalCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rollouts")
    app = f"r{uuid.uuid4().hex[:6]}"
    repo = fleet.Repo.create(root / "git")
    write_app(repo, version="1.0.0", good=True)
    first = repo.commit("web 1.0.0")
    clusters = {c.name: c for c in local_clusters}
    agents: dict[str, fleet.Process] = {}
    with exporter.serving() as metrics:
        for c in ROLES:
            metrics.requests(c, ok=100, errors=0, per_second=True)
        with prometheus.running(root / "prom", targets=[metrics.address]) as prom:
            config = root / "hub.yaml"
            config.write_text(yaml.safe_dump(hub_config(repo, app, prom.url), sort_keys=False))
            hub = fleet.start_hub(config, root / "hub-data")
            w = World(repo, hub, config, agents, clusters, app, root, metrics, prom, good=first)
            try:
                client = hub.fleet()
                for name in ROLES:
                    agents[name] = fleet.start_agent(
                        hub, client.token(name), clusters[name], root / f"agent-{name}"
                    )
                yield w
            finally:
                for p in agents.values():
                    p.stop()
                w.hub.process.stop()  # the one running now (a test restarts it)
                for lc in clusters.values():
                    subprocess.run(
                        [localkube.binary("kubectl"), f"--kubeconfig={lc.kubeconfig}", "delete",
                         "namespace", app, "--wait=false", "--ignore-not-found"],
                        capture_output=True, check=False,
                    )  # fmt: skip


def _until(world: World, what: str, check: Any, within: float = 120) -> Any:
    return wait.until_sync(
        what, check, within=within, every=0.3, retry_on=(grpc.RpcError,), explain=world.explain
    )


def test_the_first_revision_rolls_out_canary_first_and_prod_after_the_canary_baked(
    world: World,
) -> None:
    rev = world.good
    _until(world, "the canary to run 1.0.0 Healthy", lambda: world.applied_healthy("c1", rev))
    # while the canary bakes, prod has nothing yet
    r = world.rollout()
    assert r.revision == rev
    if r.step == 0:
        assert world.desired().get("c2", "") != rev and world.desired().get("c3", "") != rev
    _until(
        world,
        "every cluster to run 1.0.0 Healthy",
        lambda: all(world.applied_healthy(c, rev) for c in ROLES),
    )
    _until(world, "the rollout to succeed", lambda: world.rollout().phase == "Succeeded")
    events = world.client().history(app=world.app)
    order = [e.cluster for e in reversed(events) if e.kind == "assigned" and e.revision == rev]
    assert order[0] == "c1", f"the canary must be assigned first: {order}"
    canary_passed = next(
        e for e in reversed(events) if e.kind == "rollout" and "c1 passed step canary" in e.message
    )
    prod_assigned = [
        e
        for e in events
        if e.kind == "assigned" and e.cluster in ("c2", "c3") and e.revision == rev
    ]
    assert all(e.at.ToNanoseconds() >= canary_passed.at.ToNanoseconds() for e in prod_assigned)


def test_a_bad_commit_fails_the_canary_at_its_deadline_and_is_reverted_and_rejected(
    world: World,
) -> None:
    good = world.good
    bad = world.commit("web 2.0.0: a nodeSelector nothing matches", good=False, version="2.0.0")
    _until(world, "the rollout of the bad commit", lambda: world.rollout().revision == bad, 60)
    _until(world, "the canary to be given the bad commit", lambda: world.desired()["c1"] == bad, 60)
    _until(
        world,
        "the rollout to fail at the canary's deadline",
        lambda: world.rollout().phase == "Failed",
        within=DEADLINE + 60,
    )
    r = world.rollout()
    assert "c1" in r.reason and "deadline" in r.reason, r.reason
    assert bad in r.rejected
    _until(
        world, "the canary to be back on the good revision", lambda: world.desired()["c1"] == good
    )
    _until(
        world,
        "the canary to run the good revision again",
        lambda: world.applied_healthy("c1", good),
    )
    # prod never saw it, and auto-sync does not take it again (the repo is polled every second)
    for _ in range(3):
        d = world.desired()
        assert d["c2"] == good and d["c3"] == good, d
        assert world.rollout().revision == bad and world.rollout().phase == "Failed"
        wait.until_sync("a poll or two", lambda: True, within=1)
    # the next good commit rolls fresh, canary first
    fixed = world.commit("web 2.0.1: fixed", good=True, version="2.0.1")
    _until(world, "a fresh rollout of the fix", lambda: world.rollout().revision == fixed, 60)
    _until(
        world,
        "every cluster to run the fix Healthy",
        lambda: all(world.applied_healthy(c, fixed) for c in ROLES),
        within=150,
    )
    _until(world, "the fix's rollout to succeed", lambda: world.rollout().phase == "Succeeded")
    world.good = fixed


def test_an_error_rate_on_the_canary_fails_the_prometheus_gate_and_reverts(world: World) -> None:
    good = world.good
    world.metrics.requests("c1", ok=90, errors=10, per_second=True)
    try:
        rev = world.commit("web 3.0.0", good=True, version="3.0.0")
        _until(world, "the rollout of 3.0.0", lambda: world.rollout().revision == rev, 60)
        _until(
            world, "the gate to fail the rollout", lambda: world.rollout().phase == "Failed", 120
        )
        r = world.rollout()
        assert "error-rate" in r.reason and "< 0.05" in r.reason, r.reason
        _until(world, "the canary to go back", lambda: world.desired()["c1"] == good)
        assert world.desired()["c2"] == good and world.desired()["c3"] == good
    finally:
        world.metrics.requests("c1", ok=100, errors=0, per_second=True)
        _until(
            world, "the canary's error rate to fall again", lambda: _errors(world, "c1") == 0, 60
        )


def test_an_offline_prod_cluster_is_deferred_and_catches_up_when_it_returns(world: World) -> None:
    world.agents["c3"].stop()
    _until(world, "c3 to be seen offline", lambda: not _connected(world, "c3"), 60)
    rev = world.commit("web 4.0.0", good=True, version="4.0.0")
    _until(world, "the rollout of 4.0.0", lambda: world.rollout().revision == rev, 60)
    _until(world, "the rollout to succeed without c3", lambda: world.rollout().phase == "Succeeded")
    r = world.rollout()
    c3 = next(c for c in r.clusters if c.cluster == "c3")
    assert c3.phase == "Deferred", c3
    assert world.applied_healthy("c2", rev) and world.applied_healthy("c1", rev)
    world.agents["c3"] = fleet.start_agent(
        world.hub, "unused: the agent has its identity", world.clusters["c3"],
        world.root / "agent-c3",
    )  # fmt: skip
    _until(world, "c3 to catch up on 4.0.0", lambda: world.applied_healthy("c3", rev))
    world.good = rev


def test_the_hub_killed_mid_bake_resumes_with_the_bake_clock(world: World) -> None:
    rev = world.commit("web 5.0.0", good=True, version="5.0.0")

    def baking() -> fleet_pb2.RolloutCluster | None:
        r = world.rollout()
        c1 = next((c for c in r.clusters if c.cluster == "c1"), None)
        if r.revision != rev or c1 is None or c1.phase != "Baking":
            return None
        return c1 if c1.bake_left_seconds < BAKE - 1 else None

    before: fleet_pb2.RolloutCluster = _until(
        world, "the canary to bake 5.0.0 for a second", baking, 90
    )
    started = world.rollout().started_at
    killed = time.monotonic()
    world.hub.process.proc.kill()
    world.hub.process.proc.wait()
    world.hub = fleet.start_hub(
        world.config, world.hub.data, port=world.hub.port, http_port=world.hub.http_port,
        agent_port=world.hub.agent_port,
    )  # fmt: skip
    after = _until(world, "the restarted hub to answer", world.rollout, 30)
    c1 = next(c for c in after.clusters if c.cluster == "c1")
    down = time.monotonic() - killed
    if c1.phase == "Baking":  # the clock went on while the hub was down: never back to BAKE
        assert c1.bake_left_seconds <= before.bake_left_seconds - down + 1.5, (before, c1, down)
    else:
        assert c1.phase == "Passed", c1
    assert after.revision == rev and after.started_at == started, "the same rollout goes on"
    _until(
        world,
        "every cluster to run 5.0.0 after the restart",
        lambda: all(world.applied_healthy(c, rev) for c in ROLES),
    )
    _until(world, "the rollout to succeed", lambda: world.rollout().phase == "Succeeded")
    world.good = rev


def _connected(world: World, cluster: str) -> bool:
    for c in world.client().snapshot().clusters:
        if c.name == cluster:
            return c.connectivity == types_pb2.CONNECTIVITY_CONNECTED
    return False


def _errors(world: World, cluster: str) -> float:
    """The canary's 5xx rate as Prometheus sees it now (the gate's window)."""
    got = world.prom.query(f'sum(rate(http_requests_total{{cluster="{cluster}",code="500"}}[5s]))')
    return float(got[0]["value"][1]) if got else 0.0
