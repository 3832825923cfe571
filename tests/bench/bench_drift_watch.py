"""Benchmark: drift seen by watches, against the resync-only agent, in one process.

Run: .venv/bin/python -m tests.bench.bench_drift_watch [--clusters DIR] [--idle 60] [--tries 10]

On a local cluster (its own from deploy/local/localkube, or c1 of `--clusters DIR`, a
localkube state dir already up), five apps of 100 objects each (500 objects of 5 kinds:
ConfigMap, Secret, ServiceAccount, Service, Deployment, one namespace per app):
  1. the resync-only agent (watches off, resync 30 s, the old default) syncs them, then idles
     for `--idle` seconds: API requests per minute while nothing changes;
  2. the watching agent (resync 300 s, the new default) takes the same apps over: its process
     RSS before and after, the watches it holds, and its idle API requests per minute;
  3. drift-to-healed: `--tries` times each, a Deployment scaled, a ConfigMap edited, a Service
     deleted (by another client, as a person would), timed until the object is back as Git
     says: median and p90.
The two agents are runners in this process with kube clients of their own, so each counts its
own requests. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fleetops.agent import kube, runner
from fleetops.agent import status as st
from tests import localkube
from tests.agent.objects import policy
from tests.support import inproc

APPS = 5
KINDS = {"ConfigMap": 30, "Secret": 20, "ServiceAccount": 10, "Service": 20, "Deployment": 20}
DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)
CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
SVC = kube.ResourceType(group="", version="v1", kind="Service", plural="services", namespaced=True)


def objects() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(KINDS["ConfigMap"]):
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}"},
                    "data": {"LEVEL": "info", "INDEX": str(i)}})  # fmt: skip
    for i in range(KINDS["Secret"]):
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s-{i}"},
                    "type": "Opaque", "stringData": {"token": f"t{i}"}})  # fmt: skip
    for i in range(KINDS["ServiceAccount"]):
        out.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"sa-{i}"}})
    for i in range(KINDS["Service"]):
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}"},
                    "spec": {"selector": {"app": f"d-{i}"}, "ports": [{"port": 80}]}})  # fmt: skip
    for i in range(KINDS["Deployment"]):
        labels = {"app": f"d-{i}"}
        out.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"d-{i}"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": "app", "image": f"registry.local/d-{i}:1"}]}}},
        })  # fmt: skip
    return out


def rss_mib() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def converge(run: runner.Runner, apps: list[str], within: float = 600) -> None:
    deadline = time.monotonic() + within
    while True:
        done = [a for a in apps if (r := run.reports.get(a)) and r.sync == st.SYNCED]
        if len(done) == len(apps):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"not synced within {within:.0f} s: {sorted(set(apps) - set(done))}")
        await asyncio.sleep(0.2)


async def idle_rate(client: kube.Kube, seconds: float) -> tuple[float, dict[str, int]]:
    before = dict(client.requests)
    await asyncio.sleep(seconds)  # a benchmark measures time passing: nothing changes meanwhile
    delta = {k: n - before.get(k, 0) for k, n in client.requests.items() if n - before.get(k, 0)}
    return sum(delta.values()) * 60 / seconds, delta


async def timed(
    change: Callable[[], Coroutine[Any, Any, object]],
    back: Callable[[], Coroutine[Any, Any, bool]],
    within: float = 60,
) -> float:
    await change()
    start = time.monotonic()
    while not await back():
        if time.monotonic() - start > within:
            raise SystemExit(f"drift not healed within {within:.0f} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def drift(other: kube.Kube, apps: list[str], tries: int) -> dict[str, list[float]]:
    """Change objects through `other` (not the agent's client), time until healed."""
    took: dict[str, list[float]] = {"scale": [], "edit": [], "delete": []}
    for n in range(tries):
        for what, t in (await _round(other, apps[n % len(apps)], n % KINDS["Deployment"])).items():
            took[what].append(t)
    return took


async def _round(other: kube.Kube, ns: str, i: int) -> dict[str, float]:
    async def scale() -> None:
        live = await other.get(DEPLOY, namespace=ns, name=f"d-{i}")
        assert live is not None
        live["spec"]["replicas"] = 3
        await other.replace(DEPLOY, live)

    async def scaled_back() -> bool:
        live = await other.get(DEPLOY, namespace=ns, name=f"d-{i}")
        return live is not None and live["spec"]["replicas"] == 1

    async def edit() -> None:
        live = await other.get(CM, namespace=ns, name=f"cm-{i}")
        assert live is not None
        live["data"]["LEVEL"] = "debug"
        await other.replace(CM, live)

    async def edited_back() -> bool:
        live = await other.get(CM, namespace=ns, name=f"cm-{i}")
        return live is not None and live["data"]["LEVEL"] == "info"

    async def delete() -> None:
        await other.delete(SVC, namespace=ns, name=f"svc-{i}")

    async def recreated() -> bool:
        return await other.get(SVC, namespace=ns, name=f"svc-{i}") is not None

    return {
        "scale": await timed(scale, scaled_back),
        "edit": await timed(edit, edited_back),
        "delete": await timed(delete, recreated),
    }


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


async def bench(kubeconfig: pathlib.Path, idle: float, tries: int) -> None:
    prefix = f"bw{uuid.uuid4().hex[:5]}"
    apps = [f"{prefix}-{n}" for n in range(APPS)]
    bundles = [inproc.bundle(a, *objects()) for a in apps]
    sync = policy(self_heal=True)
    with tempfile.TemporaryDirectory(prefix="bench-drift-watch-") as tmp:
        root = pathlib.Path(tmp)
        old, new, other = (kube.connect(str(kubeconfig)) for _ in range(3))
        try:
            async with inproc.agent(old, root / "old", watching=False, resync=30) as run:
                for b in bundles:
                    inproc.assign(run, b, sync)
                start = time.monotonic()
                await converge(run, apps)
                print(f"sync of {APPS * sum(KINDS.values())} objects: "
                      f"{time.monotonic() - start:.1f} s (resync-only agent)")  # fmt: skip
                base_rate, base = await idle_rate(old, idle)
            print(
                f"idle, resync-only (30 s): {base_rate:.1f} requests/min over {idle:.0f} s {base}"
            )

            rss_before = rss_mib()
            async with inproc.agent(new, root / "new", resync=300) as run:
                assert run.watches is not None
                for b in bundles:
                    inproc.assign(run, b, sync)
                start = time.monotonic()
                await converge(run, apps)
                print(f"takeover by the watching agent: {time.monotonic() - start:.1f} s, "
                      f"{len(run.watches.watched())} watches")  # fmt: skip
                rate, counts = await idle_rate(new, idle)
                print(f"idle, watching (resync 300 s): {rate:.1f} requests/min {counts} "
                      f"(watches are opened again every {kube.WATCH_SECONDS} s)")  # fmt: skip
                print(f"RSS: {rss_before:.1f} MiB before the watching agent, "
                      f"{rss_mib():.1f} MiB with it (+{rss_mib() - rss_before:.1f} MiB)")  # fmt: skip
                took = await drift(other, apps, tries)
            every = [t for ts in took.values() for t in ts]
            for what, ts in [*took.items(), ("all", every)]:
                print(f"drift-to-healed {what:6}: median {statistics.median(ts) * 1000:.0f} ms, "
                      f"p90 {p90(ts) * 1000:.0f} ms over {len(ts)}")  # fmt: skip
            print(f"idle requests/min: {base_rate:.1f} resync-only -> {rate:.1f} watching")
        finally:
            for c in (old, new, other):
                c.close()
            for a in apps:
                await asyncio.to_thread(_delete_namespace, kubeconfig, a)


def _delete_namespace(kubeconfig: pathlib.Path, ns: str) -> None:
    subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={kubeconfig}", "delete", "namespace", ns,
         "--wait=false"],
        capture_output=True, check=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clusters", help="a localkube state dir already up (uses its c1)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measured")
    parser.add_argument("--tries", type=int, default=10, help="drifts of each kind")
    args = parser.parse_args()
    if args.clusters:
        asyncio.run(bench(pathlib.Path(args.clusters) / "c1" / "kubeconfig", args.idle, args.tries))
        return
    with tempfile.TemporaryDirectory(prefix="bench-drift-watch-kube-") as state:
        [cluster] = localkube.up(pathlib.Path(state), ["bw"])
        try:
            asyncio.run(bench(cluster.kubeconfig, args.idle, args.tries))
        finally:
            localkube.down(pathlib.Path(state))


if __name__ == "__main__":
    main()
