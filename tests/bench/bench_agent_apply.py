"""Benchmark: the agent applying 500 objects, against `kubectl apply --server-side`.

Run: .venv/bin/python -m tests.bench.bench_agent_apply [--rounds 2]

Starts its own local cluster (deploy/local/localkube), then per round:
  1. `kubectl apply --server-side -f DIR` of 500 objects (ConfigMaps, Deployments, Services
     over 5 namespaces) into fresh namespaces: the baseline;
  2. `fleetops-agent apply` of the same files into other fresh namespaces, as a process, with
     its peak resident memory;
  3. no-op resyncs of the agent's 500 objects in-process: a cold one (a restarted agent, every
     object dry-run) and a warm one; write requests counted by the agent's kube client.
Prints one line per measurement and the kubectl/agent ratio. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from fleetops.agent import kube, manifests, reconcile
from fleetops.proto.v1 import types_pb2
from tests import localkube

NAMESPACES = 5
PER_NAMESPACE = {"ConfigMap": 40, "Deployment": 30, "Service": 30}  # 100 objects a namespace


def objects(prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(NAMESPACES):
        ns = f"{prefix}-{n}"
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i in range(PER_NAMESPACE["ConfigMap"]):
            out.append({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"settings-{i}", "namespace": ns},
                "data": {"LOG_LEVEL": "info", "INDEX": str(i), "FEATURES": "a,b,c"},
            })  # fmt: skip
        for i in range(PER_NAMESPACE["Deployment"]):
            labels = {"app": f"svc-{i}"}
            out.append({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": f"svc-{i}", "namespace": ns, "labels": labels},
                "spec": {
                    "replicas": 1, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                        "name": "app", "image": f"registry.local/svc-{i}:1.0",
                        "ports": [{"containerPort": 8080}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }]}},
                },
            })  # fmt: skip
        for i in range(PER_NAMESPACE["Service"]):
            out.append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": f"svc-{i}", "namespace": ns},
                "spec": {"selector": {"app": f"svc-{i}"},
                         "ports": [{"port": 80, "targetPort": 8080}]},
            })  # fmt: skip
    return out


def write(root: pathlib.Path, objs: list[dict[str, Any]]) -> None:
    """One file per namespace, as a repository would hold them."""
    root.mkdir(parents=True)
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        ns = o["metadata"].get("namespace") or o["metadata"]["name"]
        by_ns.setdefault(ns, []).append(o)
    for ns, docs in by_ns.items():
        (root / f"{ns}.yaml").write_text(yaml.safe_dump_all(docs))


def run_kubectl(kubeconfig: pathlib.Path, root: pathlib.Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={kubeconfig}", "apply", "--server-side",
         "-f", str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


AGENT_WITH_RSS = """
import resource, sys
from fleetops.agent import cli
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
      file=sys.stderr)
"""


def run_agent(
    kubeconfig: pathlib.Path, root: pathlib.Path, app: str, state: pathlib.Path
) -> tuple[float, float]:
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", "import json\n" + AGENT_WITH_RSS, "apply",
         "--kubeconfig", str(kubeconfig), "--app", app, "--bundle", str(root),
         "--state", str(state), "--output", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    stats = json.loads(res.stderr.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise SystemExit(f"agent apply failed:\n{res.stdout[-3000:]}")
    return elapsed, stats["maxrss_kb"] / 1024


async def resyncs(kubeconfig: pathlib.Path, root: pathlib.Path, app: str) -> dict[str, float]:
    bundle = manifests.bundle_from_dir(root, app=app, namespace="")
    policy = types_pb2.SyncPolicy(auto=True, prune=True, self_heal=True, force_conflicts=True)
    client = kube.connect(str(kubeconfig))
    try:
        rec = reconcile.Reconciler(client)  # a fresh agent: nothing cached
        out: dict[str, float] = {}
        for label in ("cold", "warm"):
            before = client.writes()
            dry = client.requests["PATCH(dry-run)"]
            start = time.perf_counter()
            result = await rec.heal(bundle, policy)
            out[f"{label}_s"] = time.perf_counter() - start
            out[f"{label}_writes"] = client.writes() - before
            out[f"{label}_dry_runs"] = client.requests["PATCH(dry-run)"] - dry
            if result.sync != types_pb2.SYNC_STATUS_SYNCED:
                raise SystemExit(f"resync found drift: {result.reason}")
        return out
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
        work = pathlib.Path(tmp)
        [cluster] = localkube.up(work / "cluster", ["bench"], owner_pid=os.getpid())
        try:
            ratios, agent_times, kubectl_times, rss = [], [], [], []
            res: dict[str, float] = {}
            for r in range(ns.rounds):
                base = work / f"kubectl-{r}"
                write(base, objects(f"k{r}"))
                mine = work / f"agent-{r}"
                write(mine, objects(f"a{r}"))
                k = run_kubectl(cluster.kubeconfig, base)
                a, mb = run_agent(cluster.kubeconfig, mine, f"bench-{r}", work / "state")
                kubectl_times.append(k)
                agent_times.append(a)
                rss.append(mb)
                ratios.append(a / k)
                print(f"round {r}: kubectl {k:.2f} s, fleetops-agent {a:.2f} s, "
                      f"ratio {a / k:.2f}, agent peak RSS {mb:.0f} MB", flush=True)  # fmt: skip
                res = asyncio.run(resyncs(cluster.kubeconfig, mine, f"bench-{r}"))
                print(f"round {r}: no-op resync cold {res['cold_s']:.2f} s "
                      f"({res['cold_dry_runs']:.0f} dry-runs, {res['cold_writes']:.0f} writes), "
                      f"warm {res['warm_s']:.2f} s ({res['warm_dry_runs']:.0f} dry-runs, "
                      f"{res['warm_writes']:.0f} writes)", flush=True)  # fmt: skip
            print(
                f"RESULT first apply of {len(objects('x'))} objects: agent/kubectl ratio "
                f"median {statistics.median(ratios):.2f} "
                f"(agent {statistics.median(agent_times):.2f} s, "
                f"kubectl {statistics.median(kubectl_times):.2f} s); agent peak RSS "
                f"{max(rss):.0f} MB; last no-op resync: cold {res['cold_s']:.2f} s, warm "
                f"{res['warm_s']:.2f} s, writes {res['cold_writes'] + res['warm_writes']:.0f}"
            )
        finally:
            localkube.down(work / "cluster")


if __name__ == "__main__":
    main()
