"""Image automation end to end, as a user sees it: a real registry (Debian's docker-registry,
images pushed over the distribution API), a Git repository whose Deployment carries a Flux
setter marker on its image line, a hub process scanning the registry every 2 s, and three agent
processes on the local clusters (c1 the canary, c2 and c3 prod). The app's rollout bakes the
canary a few seconds, then prod waits for an operator's approval (a manual gate), so a prod
rollout is still running when the test aborts it.

Tests in this module run in order against one world: 1.0.0, 1.1.0, 1.10.0 and 1.2.0-rc.1 in the
registry give exactly one commit, choosing 1.10.0 (numeric, no prerelease), by the configured
author and changing only the marked line, and the Deployment runs 1.10.0 on c1 first and on
c2/c3 only after c1 baked (read from the clusters' API, ordered by when each change was seen
against the hub's "c1 passed step canary"); 1.11.0 gives one more commit rolled out the same
way; `fleetops-hub rollout abort` puts the clusters back on 1.10.0, Git too through one more
image commit, and later scans propose nothing; a cluster an operator rolled back keeps its
revision when the next image commit rolls out."""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from fleetops.proto.v1 import fleet_pb2
from tests import localkube
from tests.support import chartrepo, deployimages, fleet, imagefleet, wait
from tests.support import registry as registrypush

pytestmark = pytest.mark.cluster
ROLES = {"c1": "canary", "c2": "prod", "c3": "prod"}
BAKE = 3  # seconds the canary bakes Healthy before prod is given the revision
SCAN = 2  # seconds between two scans of the registry
T = TypeVar("T")


@dataclasses.dataclass
class World:
    repo: fleet.Repo
    hub: fleet.Hub
    agents: dict[str, fleet.Process]
    app: str
    registry: chartrepo.OciRegistry
    deployments: deployimages.DeploymentImages
    first: str  # the revision Git starts at (1.0.0)

    def image(self, tag: str) -> str:
        return f"{self.registry.host}/team/web:{tag}"

    def push(self, *tags: str) -> None:
        imagefleet.push(self.registry, *tags)

    def commits(self) -> list[tuple[str, str, str]]:
        """(sha, 'author <email>', subject) of the branch the hub follows, newest first."""
        out = fleet.git(self.repo.bare, "log", "--format=%H%x09%an <%ae>%x09%s", "main")
        return [tuple(line.split("\t", 2)) for line in out.splitlines()]  # type: ignore[misc]

    def changed_lines(self, old: str, new: str) -> list[str]:
        diff = fleet.git(self.repo.bare, "diff", old, new)
        return [x for x in diff.splitlines() if x[:1] in "+-" and x[:3] not in ("+++", "---")]

    def scans(self) -> int:
        """Tag listings the hub asked the registry for (the registry's access log)."""
        text = (self.registry.root / "registry.log").read_text(errors="replace")
        return sum(
            1
            for line in text.splitlines()
            if "GET /v2/team/web/tags/list" in line and "fleetops-hub" in line
        )

    def cli(self, *args: str) -> str:
        """`fleetops-hub ARGS` as an operator on the hub machine runs it."""
        done = subprocess.run(
            [str(fleet.BIN / "fleetops-hub"), *args, "--hub", self.hub.address,
             "--data", str(self.hub.data)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"fleetops-hub {' '.join(args)}: {done.stderr}"
        return done.stdout

    def rollout(self) -> fleet_pb2.Rollout:
        client = self.hub.fleet()
        got = client.stub.RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app=self.app), metadata=client.meta, timeout=30
        )
        return got.rollouts[0]

    def desired(self, cluster: str) -> str:
        cell = self.hub.fleet().cells().get((cluster, self.app))
        return cell.desired_revision if cell is not None else ""

    def canary_passed(self, rev: str) -> float:
        """When the hub recorded that c1 passed the canary step with `rev` (wall clock)."""
        for e in self.hub.fleet().history(app=self.app):
            if e.kind == "rollout" and e.revision == rev and "c1 passed step canary" in e.message:
                return float(e.at.ToNanoseconds()) / 1e9
        raise AssertionError(f"no 'c1 passed step canary' entry for {rev[:8]}")

    def explain(self) -> str:
        try:
            r = self.rollout()
            said = f"rollout {r.revision[:8]} {r.phase}: {r.reason}\n" + "\n".join(
                f"  {c.cluster} {c.phase}: {c.reason}" for c in r.clusters
            )
        except grpc.RpcError as e:
            said = f"rollout status: {e.code().name}"
        commits = "\n".join(f"  {s[:8]} {a}: {m}" for s, a, m in self.commits())
        logs = f"--- hub\n{self.hub.process.tail()}" + "".join(
            f"\n--- agent {c}\n{p.tail()[-1500:]}" for c, p in self.agents.items()
        )
        return f"{said}\ncommits:\n{commits}\n{self.deployments.describe()}\n{logs[-6000:]}"

    def until(self, what: str, probe: Callable[[], T | None], within: float = 60) -> T:
        return wait.until_sync(
            what, probe, within=within, every=0.2, retry_on=(grpc.RpcError,), explain=self.explain
        )

    def image_commit(self, count: int, old: str, new: str) -> str:
        """Wait for the branch to hold `count` commits, the newest the bot's old -> new; its
        sha, after checking it changed the marked line and nothing else."""
        self.until(
            f"commit {count}, the image update to {new}", lambda: len(self.commits()) >= count
        )
        got = self.commits()
        assert len(got) == count, f"one image commit expected: {got}"
        sha, author, subject = got[0]
        path = "apps/web/deployment.yaml"
        assert author == "fleetops-bot <bot@example.com>", got[0]
        assert subject == f"images: {path}: {self.image(old)} -> {self.image(new)}", subject
        assert self.changed_lines(got[1][0], sha) == [
            f"-          image: {self.image(old)} {imagefleet.MARKER}",
            f"+          image: {self.image(new)} {imagefleet.MARKER}",
        ]
        return sha

    def rolled_out_canary_first(self, rev: str, tag: str, prod: tuple[str, ...]) -> None:
        """`tag` runs on c1, then on `prod`, none of which took it before c1 baked it."""
        image = self.image(tag)
        self.until(f"c1 to run {tag}", lambda: self.deployments.running("c1") == image)
        for c in prod:
            self.until(f"{c} to run {tag}", lambda c=c: self.deployments.running(c) == image)
        c1 = self.deployments.first("c1", image)
        c1_ready = self.deployments.first("c1", image, ready=True)
        assert c1 is not None and c1_ready is not None
        for c in prod:
            seen = self.deployments.first(c, image)
            assert seen is not None
            assert c1.at <= seen.after, f"{c} had {tag} before c1: {self.deployments.describe()}"
            # c2's change was no later than its `at`, c1's ready no earlier than its `after`:
            # a slow poll can only make the gap look longer, never shorter
            assert seen.at - c1_ready.after >= BAKE - 0.25, (
                f"{c} had {tag} {seen.at - c1_ready.after:.1f} s after c1 ran it; bake {BAKE} s"
            )
        passed = self.canary_passed(rev)
        for c in prod:
            seen = self.deployments.first(c, image)
            assert seen is not None and seen.at >= passed, f"{c} had {tag} before c1 passed"


def hub_config(repo: fleet.Repo, app: str, host: str) -> dict[str, Any]:
    return {
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1h"}],
        "clusters": [{"name": c, "labels": {"role": r}} for c, r in ROLES.items()],
        "clusterGroups": [
            {"name": "canary", "selector": {"matchLabels": {"role": "canary"}}},
            {"name": "prod", "selector": {"matchLabels": {"role": "prod"}}},
        ],
        "gates": [{"name": "approval", "manual": {}}],
        "apps": [
            {
                "name": app,
                "repo": "platform",
                "path": "apps/web",
                "namespace": app,
                "sync": {"auto": True, "prune": True, "selfHeal": True},
                "rollout": {
                    "steps": [
                        {"name": "canary", "clusterGroup": "canary", "bake": f"{BAKE}s"},
                        {"name": "prod", "clusterGroup": "prod", "gates": ["approval"]},
                    ],
                    "progressDeadline": "60s",
                    "onFailure": "revert",
                },
            }
        ],
        **imagefleet.image_config(host, interval=f"{SCAN}s"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def world(
    local_clusters: list[localkube.LocalCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("images")
    app = f"i{uuid.uuid4().hex[:6]}"
    clusters = {c.name: c for c in local_clusters}
    agents: dict[str, fleet.Process] = {}
    with registrypush.registry_server(root / "registry") as reg:
        # all four are there before the hub's first scan: one scan sees them together
        imagefleet.push(reg, "1.0.0", "1.1.0", "1.10.0", "1.2.0-rc.1")
        repo = fleet.Repo.create(root / "git")
        deployment = imagefleet.cluster_deployment(f"{reg.host}/team/web:1.0.0")
        repo.write("apps/web/deployment.yaml", deployment)
        first = repo.commit("web 1.0.0")
        config = root / "hub.yaml"
        config.write_text(yaml.safe_dump(hub_config(repo, app, reg.host), sort_keys=False))
        kubeconfigs = {c: clusters[c].kubeconfig for c in ROLES}
        with deployimages.DeploymentImages(kubeconfigs, namespace=app, name="web") as seen:
            hub = fleet.start_hub(config, root / "hub-data")
            try:
                imagefleet.start_agents(hub, [clusters[c] for c in ROLES], root, into=agents)
                yield World(repo, hub, agents, app, reg, seen, first)
            finally:
                for p in agents.values():
                    p.stop()
                hub.process.stop()
                imagefleet.delete_namespace([c.kubeconfig for c in clusters.values()], app)


def test_the_newest_stable_tag_is_committed_once_and_rolls_out_canary_first(
    world: World,
) -> None:
    rev = world.image_commit(2, "1.0.0", "1.10.0")
    world.rolled_out_canary_first(rev, "1.10.0", ("c2", "c3"))
    # scans went on while it rolled out: none proposed anything else
    scans = world.scans()
    world.until("two more scans", lambda: world.scans() >= scans + 2, within=4 * SCAN + 10)
    assert [s for s, _, _ in world.commits()] == [rev, world.first]
    # prod waits for its approval; given, the rollout succeeds
    world.cli("rollout", "promote", world.app)
    world.until("the rollout to succeed", lambda: world.rollout().phase == "Succeeded")
    assert world.rollout().revision == rev


def test_a_new_tag_gives_one_more_commit_rolled_out_the_same_way(world: World) -> None:
    world.push("1.11.0")
    rev = world.image_commit(3, "1.10.0", "1.11.0")
    world.rolled_out_canary_first(rev, "1.11.0", ("c2", "c3"))
    r = world.rollout()
    assert (r.revision, r.phase) == (rev, "Running"), "prod waits for its approval"


def test_an_aborted_rollout_puts_clusters_and_git_back_and_its_tag_is_never_proposed_again(
    world: World,
) -> None:
    bad, good = world.commits()[0][0], world.commits()[1][0]
    said = world.cli("rollout", "abort", world.app)
    assert "abort" in said, said
    before = world.image("1.10.0")
    for c in ROLES:  # every cluster took 1.11.0: every one goes back
        world.until(f"{c} to run 1.10.0 again", lambda c=c: world.deployments.running(c) == before)
    back = world.image_commit(4, "1.11.0", "1.10.0")
    assert world.changed_lines(good, back) == [], "Git is back to what 1.10.0's commit held"
    # the tag is still the newest in the registry; later scans never propose it again
    scans = world.scans()
    world.until("two more scans", lambda: world.scans() >= scans + 2, within=4 * SCAN + 10)
    assert world.commits()[0][0] == back and len(world.commits()) == 4
    assert all(world.deployments.image(c) == before for c in ROLES), world.deployments.describe()
    assert bad not in {world.desired(c) for c in ROLES}


def test_a_pinned_cluster_keeps_its_revision_when_an_image_commit_lands(world: World) -> None:
    old = world.image("1.0.0")
    world.cli("rollback", world.app, world.first, "--cluster", "c3")
    world.until("c3 to run its pin, 1.0.0", lambda: world.deployments.running("c3") == old)
    world.push("1.12.0")
    rev = world.image_commit(5, "1.10.0", "1.12.0")
    world.rolled_out_canary_first(rev, "1.12.0", ("c2",))
    r = world.rollout()
    assert r.revision == rev and "c3" not in {c.cluster for c in r.clusters}, r
    assert world.desired("c3") == world.first
    assert [s.image for s in world.deployments.sightings("c3")][-1] == old
    assert world.deployments.first("c3", world.image("1.12.0")) is None
