"""Benchmark: commit-to-converged, from a signed push webhook to every one of 3 real clusters
reporting Synced and Healthy at the new revision.

Run: .venv/bin/python -m tests.bench.bench_commit_to_converged [--commits 5]

Starts 3 local clusters, a Git repository, a hub process (polling every hour, so only the
webhook can start a fetch) and 3 agent processes. Each round commits a change to an app that
targets every cluster, sends the webhook as GitHub would, and polls the hub's fleet API every
20 ms until all three cells show the new revision applied, Synced and Healthy. Prints each
round and the median. Not a timed test.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import pathlib
import statistics
import tempfile
import time
import urllib.request

import grpc
import yaml

from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.support import fleet, wait

SECRET = "bench-webhook-secret"
NAMES = ["b1", "b2", "b3"]


def webhook(port: int, repo: str) -> None:
    body = b'{"ref": "refs/heads/main"}'
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhook/{repo}",
        data=body,
        method="POST",
        headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 202, resp.status


def manifests(n: int) -> list[dict[str, object]]:
    labels = {"app": "web"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web-config"},
            "data": {"round": str(n)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"round": str(n)}},
                    "spec": {"containers": [{"name": "web", "image": "registry.local/web:1"}]},
                },
            },
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=5)
    ns = parser.parse_args()
    os.environ["FLEETOPS_BENCH_WEBHOOK"] = SECRET
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
        root = pathlib.Path(tmp)
        clusters = localkube.up(root / "clusters", NAMES, owner_pid=os.getpid())
        procs: list[fleet.Process] = []
        try:
            repo = fleet.Repo.create(root / "git")
            repo.write("apps/web/all.yaml", manifests(0))
            rev = repo.commit("round 0")
            cfg = root / "hub.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "repos": [
                            {
                                "name": "platform",
                                "url": repo.url,
                                "pollInterval": "1h",
                                "webhookSecretEnv": "FLEETOPS_BENCH_WEBHOOK",
                            }
                        ],
                        "apps": [
                            {
                                "name": "web",
                                "repo": "platform",
                                "path": "apps/web",
                                "namespace": "bench-web",
                                "sync": {"auto": True, "prune": True, "selfHeal": True},
                            }
                        ],
                    }
                )
            )
            hub = fleet.start_hub(cfg, root / "hub")
            procs.append(hub.process)
            client = hub.fleet()
            for c in clusters:
                procs.append(
                    fleet.start_agent(
                        hub, client.token(c.name), c, root / f"agent-{c.name}", resync=30
                    )
                )

            def done(rev: str) -> bool:
                cells = [s for s in client.snapshot().statuses if s.app == "web"]
                return len(cells) == len(NAMES) and all(
                    s.applied_revision == rev
                    and s.sync == types_pb2.SYNC_STATUS_SYNCED
                    and s.health == types_pb2.HEALTH_STATUS_HEALTHY
                    for s in cells
                )

            wait.until_sync(
                "initial convergence",
                lambda: done(rev),
                within=120,
                retry_on=(grpc.RpcError,),  # the hub may still be starting its fleet API
                explain=lambda: fleet.describe(client.cells()),
            )
            times = []
            for n in range(1, ns.commits + 1):
                repo.write("apps/web/all.yaml", manifests(n))
                rev = repo.commit(f"round {n}")
                start = time.perf_counter()
                webhook(hub.http_port, "platform")
                while not done(rev):
                    if time.perf_counter() - start > 60:
                        raise SystemExit(
                            f"round {n} did not converge:\n{fleet.describe(client.cells())}"
                        )
                    time.sleep(0.02)
                took = time.perf_counter() - start
                times.append(took)
                print(
                    f"commit {n}: webhook to 3 clusters Synced+Healthy in {took:.2f} s", flush=True
                )
            print(
                f"RESULT commit-to-converged over {len(times)} commits: "
                f"median {statistics.median(times):.2f} s, "
                f"min {min(times):.2f} s, max {max(times):.2f} s"
            )
        finally:
            for p in procs:
                p.stop()
            localkube.down(root / "clusters")


if __name__ == "__main__":
    main()
