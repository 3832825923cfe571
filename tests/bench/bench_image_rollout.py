"""Benchmark: registry push to canary cluster applied, for image automation.

Run: .venv/bin/python -m tests.bench.bench_image_rollout [--pushes 5] [--interval 2] [--bake 1]

Real parts only: Debian's docker-registry on loopback (images pushed over the distribution
API), a Git repository whose Deployment carries a Flux setter marker, a `fleetops-hub serve`
process scanning the registry every `--interval` seconds (its repo polls hourly: only its own
image commit makes it fetch), and three agent processes on local clusters (c1 the canary, c2
and c3 prod; FLEETOPS_TEST_CLUSTERS names running ones, else three are started and stopped).
The app's rollout gives c1 the revision first and, after `--bake` seconds, c2 and c3.

Each round pushes a new tag and measures, in seconds:
- push -> commit pushed: the push's last request answered to the branch's ref moving in the
  bare repository (watched every 5 ms); bounded below by the scan interval's phase;
- commit -> hub head: to the hub's log line "repo platform: new revision" (ms timestamps);
- head -> canary applied: to the Deployment on c1 showing the new tag in its spec (the kube
  API read every 20 ms), and to it running (rolled out: every replica updated and available);
then waits for the whole rollout to succeed, so every push starts from a quiet fleet, and
waits a random 0 to `--interval` seconds (seeded) so the pushes land at any phase of the scan
timer. Prints each round, then median and max. Not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import pathlib
import random
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import yaml

from fleetops.proto.v1 import fleet_pb2
from tests import localkube
from tests.support import deployimages, fleet, imagefleet, wait
from tests.support import registry as registrypush

NAMES = ["c1", "c2", "c3"]
APP = f"imgbench-{uuid.uuid4().hex[:6]}"  # its namespace too, on clusters maybe shared
HEAD_LINE = re.compile(r"^(\S+ \S+) INFO repo platform: new revision ([0-9a-f]{8})", re.M)


def hub_yaml(repo: fleet.Repo, host: str, *, interval: float, bake: float) -> dict[str, object]:
    return {
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1h"}],
        "clusters": [{"name": c, "labels": {"role": "canary" if c == "c1" else "prod"}}
                     for c in NAMES],
        "apps": [{
            "name": APP, "repo": "platform", "path": "apps/web", "namespace": APP,
            "sync": {"auto": True, "prune": True},
            "rollout": {"steps": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}},
                 "bake": f"{bake:g}s"},
                {"name": "prod", "clusterSelector": {"matchLabels": {"role": "prod"}}},
            ], "progressDeadline": "120s"},
        }],
        **imagefleet.image_config(
            host, interval=f"{interval:g}s", policy={"policy": {"semver": {"range": ">=1.0.0"}}},
            commit={"author": imagefleet.BOT}, update="bench",
        ),
    }  # fmt: skip


class RefWatch:
    """When the bare repository's `main` moved to each sha (its loose ref file, every 5 ms)."""

    def __init__(self, bare: pathlib.Path) -> None:
        self.ref = bare / "refs" / "heads" / "main"
        self.moved: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ref-watch", daemon=True)

    def __enter__(self) -> RefWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = ""
        while not self._stop.wait(0.005):  # the sampling period, not a wait for a state
            try:
                sha = self.ref.read_text().strip()
            except OSError:  # replaced mid-read
                continue
            if sha != last:
                self.moved.setdefault(sha, time.time())
                last = sha


def head_times(log: pathlib.Path) -> dict[str, float]:
    """Short sha -> when the hub's log said it saw it (local time, as the hub logs)."""
    out: dict[str, float] = {}
    for stamp, short in HEAD_LINE.findall(log.read_text(errors="replace")):
        at = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.setdefault(short, at)
    return out


@dataclasses.dataclass
class Round:
    tag: str
    pushed: float
    committed: float
    head: float
    applied: float
    running: float

    def line(self) -> str:
        return (
            f"push {self.tag}: commit pushed {self.committed - self.pushed:.2f} s, hub head "
            f"+{self.head - self.committed:.2f} s, canary applied +{self.applied - self.head:.2f}"
            f" s = {self.applied - self.pushed:.2f} s (running {self.running - self.pushed:.2f} s)"
        )


@contextlib.contextmanager
def clusters(root: pathlib.Path) -> Iterator[dict[str, pathlib.Path]]:
    reuse = os.environ.get("FLEETOPS_TEST_CLUSTERS")
    if reuse:
        yield {n: pathlib.Path(reuse) / n / "kubeconfig" for n in NAMES}
        return
    started = localkube.up(root / "clusters", NAMES, owner_pid=os.getpid())
    try:
        yield {c.name: c.kubeconfig for c in started}
    finally:
        localkube.down(root / "clusters")


def rollout_phase(hub: fleet.Hub) -> tuple[str, str]:
    client = hub.fleet()
    got = client.stub.RolloutStatus(
        fleet_pb2.RolloutStatusRequest(app=APP), metadata=client.meta, timeout=30
    )
    r = got.rollouts[0]
    return r.revision, r.phase


def run(ns: argparse.Namespace, root: pathlib.Path) -> list[str]:
    procs: list[fleet.Process] = []
    rounds: list[Round] = []
    rng = random.Random(ns.seed)
    with (
        clusters(root) as kubeconfigs,
        registrypush.registry_server(root / "registry") as reg,
    ):
        image = f"{reg.host}/team/web"
        imagefleet.push(reg, "1.0.0")
        repo = fleet.Repo.create(root / "git")
        repo.write("apps/web/deployment.yaml", imagefleet.cluster_deployment(f"{image}:1.0.0"))
        first = repo.commit("web 1.0.0")
        cfg = root / "hub.yaml"
        cfg.write_text(yaml.safe_dump(hub_yaml(repo, reg.host, interval=ns.interval, bake=ns.bake)))
        try:
            with (
                deployimages.DeploymentImages(
                    {"c1": kubeconfigs["c1"]}, namespace=APP, name="web", every=0.02
                ) as canary,
                RefWatch(repo.bare) as refs,
            ):
                hub = fleet.start_hub(cfg, root / "hub")
                procs.append(hub.process)
                agents: dict[str, fleet.Process] = {}
                try:
                    imagefleet.start_agents(
                        hub,
                        [localkube.LocalCluster(n, kubeconfigs[n]) for n in NAMES],
                        root,
                        into=agents,
                    )
                finally:
                    procs.extend(agents.values())

                def settled(rev: str) -> bool:
                    return rollout_phase(hub) == (rev, "Succeeded")

                wait.until_sync(
                    "the first revision rolled out", lambda: settled(first), within=180,
                    retry_on=(grpc.RpcError, IndexError), explain=hub.process.tail,
                )  # fmt: skip
                for i in range(1, ns.pushes + 1):
                    tag = f"1.{i}.0"
                    # a push lands at any phase of the scan timer, not just after a rollout
                    # ended: this sleep is the sampling, not a wait for a state
                    time.sleep(rng.uniform(0, ns.interval))
                    imagefleet.push(reg, tag)
                    pushed = time.time()
                    ready = wait.until_sync(
                        f"c1 running {tag}",
                        lambda tag=tag: canary.first("c1", f"{image}:{tag}", ready=True),
                        within=ns.interval + 60, every=0.05, explain=hub.process.tail,
                    )  # fmt: skip
                    applied = canary.first("c1", f"{image}:{tag}")
                    assert applied is not None
                    sha = fleet.git(repo.bare, "rev-parse", "main")
                    heads = head_times(hub.process.log)
                    r = Round(tag, pushed, refs.moved[sha], heads[sha[:8]], applied.at, ready.at)
                    rounds.append(r)
                    print(r.line(), flush=True)
                    wait.until_sync(
                        f"the rollout of {tag} to succeed", lambda sha=sha: settled(sha),
                        within=120, retry_on=(grpc.RpcError,), explain=hub.process.tail,
                    )  # fmt: skip
        finally:
            for p in procs:
                p.stop()
            imagefleet.delete_namespace(kubeconfigs.values(), APP)
    return summary(rounds, interval=ns.interval)


def summary(rounds: list[Round], *, interval: float) -> list[str]:
    def stat(name: str, values: list[float]) -> str:
        return f"{name}: median {statistics.median(values):.2f} s, max {max(values):.2f} s"

    return [
        f"scan interval {interval:g} s (push -> commit waits for the next scan: 0 to "
        f"{interval:g} s of it), {len(rounds)} pushes",
        stat("  push -> commit pushed", [r.committed - r.pushed for r in rounds]),
        stat("  commit pushed -> hub head", [r.head - r.committed for r in rounds]),
        stat(
            "  hub head -> canary applied (Deployment spec on c1)",
            [r.applied - r.head for r in rounds],
        ),  # fmt: skip
        stat(
            "  canary applied -> running (rolled out on c1)",
            [r.running - r.applied for r in rounds],
        ),  # fmt: skip
        "RESULT " + stat("registry push -> canary applied", [r.applied - r.pushed for r in rounds]),
        "RESULT " + stat("registry push -> canary running", [r.running - r.pushed for r in rounds]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="scan interval, seconds")
    parser.add_argument("--bake", type=float, default=1.0, help="canary bake, seconds")
    parser.add_argument("--seed", type=int, default=15, help="for the pushes' random phase")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetops-imgbench-") as tmp:
        for line in run(ns, pathlib.Path(tmp)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
