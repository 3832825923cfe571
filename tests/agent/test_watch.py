"""Drift seen by watching: a running agent (no hub) heals a scaled, edited or deleted object in
under 2 s with self-heal on, reports it without touching it with self-heal off, and never
dry-runs an object nobody touched after the first pass. The resync timer is 600 s here, so
whatever is healed or reported was seen by a watch."""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

from fleetops.agent import errors, kube, runner
from fleetops.agent import status as st
from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, deployment, namespace, policy
from tests.support import agentrun, inproc, tcpgate, wait

pytestmark = pytest.mark.cluster

DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)
CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
EVENT = kube.ResourceType(group="", version="v1", kind="Event", plural="events", namespaced=True)
HEAL_WITHIN = 2.0


@pytest.fixture
async def cleanup(
    local_clusters: list[localkube.LocalCluster], unique_name: str
) -> AsyncIterator[list[localkube.LocalCluster]]:
    """The shared clusters; the test's namespace is deleted afterwards."""
    yield local_clusters
    await kubectl(local_clusters[0], "delete", "namespace", unique_name, "--wait=false")


async def kubectl(cluster: localkube.LocalCluster, *args: str) -> None:
    res = await asyncio.to_thread(
        subprocess.run,
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 or "NotFound" in res.stderr, res.stderr


def synced(run: runner.Runner, app: str) -> types_pb2.AppReport | None:
    report = run.reports.get(app)
    return report if report is not None and report.sync == st.SYNCED else None


async def replicas(client: kube.Kube, ns: str) -> int:
    live = await client.get(DEPLOY, namespace=ns, name="web")
    return int(live["spec"]["replicas"]) if live else -1


async def test_scaled_edited_and_deleted_objects_are_healed_in_under_two_seconds(
    cleanup: list[localkube.LocalCluster],
    cluster: kube.Kube,
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    ns, c1 = unique_name, cleanup[0]
    bundle = make_bundle(namespace(ns), deployment("web", replicas=2), configmap("settings", a="1"))
    async with inproc.agent(cluster, tmp_path) as run:
        inproc.assign(run, bundle, policy(self_heal=True))
        await wait.until("the first sync", lambda: synced(run, ns), within=60)
        took: list[float] = []
        for i in range(4):  # 12 drifts, 4 of each
            await kubectl(c1, "-n", ns, "scale", "deployment/web", f"--replicas={5 + i}")
            start = time.monotonic()
            await wait.until("the scale to be healed", lambda: _is(replicas(cluster, ns), 2))
            took.append(time.monotonic() - start)

            await kubectl(c1, "-n", ns, "patch", "configmap/settings", "-p", '{"data":{"a":"x"}}')
            start = time.monotonic()
            await wait.until("the edit to be healed", lambda: _data(cluster, ns, {"a": "1"}))
            took.append(time.monotonic() - start)

            await kubectl(c1, "-n", ns, "delete", "configmap/settings")
            start = time.monotonic()
            await wait.until("the deleted ConfigMap back", lambda: _data(cluster, ns, {"a": "1"}))
            took.append(time.monotonic() - start)
        print(f"WATCH heal: median {statistics.median(took):.2f} s, max {max(took):.2f} s")
        assert statistics.median(took) < HEAL_WITHIN and max(took) < 2 * HEAL_WITHIN, took
        assert run.reports[ns].healed_resources >= 12
        assert run.woken >= 12, "the heals were not started by watch events"


async def test_without_self_heal_drift_is_reported_at_once_and_left_alone(
    cleanup: list[localkube.LocalCluster],
    cluster: kube.Kube,
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    ns, c1 = unique_name, cleanup[0]
    bundle = make_bundle(namespace(ns), deployment("web", replicas=1))
    async with inproc.agent(cluster, tmp_path) as run:
        inproc.assign(run, bundle, policy(self_heal=False))
        await wait.until("the first sync", lambda: synced(run, ns), within=60)
        writes = cluster.writes()
        await kubectl(c1, "-n", ns, "scale", "deployment/web", "--replicas=3")

        def drifted() -> list[str]:
            report = run.reports.get(ns)
            return [d.path for r in report.resources for d in r.drift] if report else []

        paths = await wait.until("the drift to be reported", drifted, within=HEAL_WITHIN)
        assert paths == ["spec.replicas"]
        assert run.reports[ns].sync == st.OUT_OF_SYNC
        assert await replicas(cluster, ns) == 3
        assert cluster.writes() == writes, f"the agent wrote: {cluster.requests}"


async def test_an_untouched_object_is_never_dry_run_again(
    cleanup: list[localkube.LocalCluster],
    cluster: kube.Kube,
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    ns, c1 = unique_name, cleanup[0]
    objs = [configmap(f"cm-{i}", k=str(i)) for i in range(20)]
    bundle = make_bundle(namespace(ns), *objs)
    # a resync every 2 s: still no dry-run of what nobody touched (only every 10th is full)
    async with inproc.agent(cluster, tmp_path, resync=2) as run:
        inproc.assign(run, bundle, policy(self_heal=True))
        await wait.until("the first sync", lambda: synced(run, ns), within=60)
        dry_runs = cluster.requests["PATCH(dry-run)"]
        await kubectl(c1, "-n", ns, "patch", "configmap/cm-7", "-p", '{"data":{"k":"x"}}')
        await wait.until("the edit to be healed", lambda: _data(cluster, ns, {"k": "7"}, "cm-7"))
        for n in (1, 2):  # each resync pass reads the app's objects (lists, no dry-run)
            reads = cluster.requests["LIST"]
            await wait.until(
                f"resync pass {n}", lambda r=reads: cluster.requests["LIST"] > r, within=10
            )
        assert cluster.requests["PATCH(dry-run)"] - dry_runs == 1, (
            "only the edited object may be dry-run again"
        )


async def test_a_watch_from_a_version_the_server_no_longer_keeps_is_410_gone(
    local_clusters: list[localkube.LocalCluster], cluster: kube.Kube
) -> None:
    """The server's 410 Gone reaches the caller as a KubeError with that status (what makes
    the agent relist). Events are watched because kube-apiserver keeps no watch cache for them:
    the watch goes to etcd, which has forgotten versions before its last compaction. (A watch
    cache started less than a buffer's worth of changes ago still serves any older version.)"""
    localkube.compact_etcd(local_clusters[0])
    with pytest.raises(errors.KubeError) as gone:
        await cluster.watch(EVENT, "default", resource_version="1", on_event=lambda _: None)
    assert gone.value.status == 410


async def _is(value: object, want: object) -> bool:
    return await value == want  # type: ignore[misc]


async def _data(client: kube.Kube, ns: str, want: dict[str, str], name: str = "settings") -> bool:
    live = await client.get(CM, namespace=ns, name=name)
    return live is not None and live.get("data") == want


async def test_a_broken_connection_is_resumed_and_drift_made_meanwhile_is_healed(
    cleanup: list[localkube.LocalCluster],
    cluster: kube.Kube,
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    """The agent's connections to the API server are reset and refused (a TCP gate in front
    of it) while someone scales the Deployment; once the gate opens, the watch resumes from
    the version it had and the change made meanwhile is healed."""
    ns = unique_name
    bundle = make_bundle(namespace(ns), deployment("web", replicas=1))
    with tcpgate.Gate(agentrun.apiserver(cleanup[0].kubeconfig)) as gate:
        gate.open()
        path = agentrun.kubeconfig_via(cleanup[0].kubeconfig, gate.port, tmp_path / "kc")
        gated = kube.connect(str(path))
        try:
            async with inproc.agent(gated, tmp_path / "state") as run:
                assert run.watches is not None
                inproc.assign(run, bundle, policy(self_heal=True))
                await wait.until("the first sync", lambda: synced(run, ns), within=60)
                watches = run.watches
                restarts = watches.resumes + watches.relists
                gate.close()  # resets the watch's connection; new ones are refused
                await kubectl(cleanup[0], "-n", ns, "scale", "deployment/web", "--replicas=4")
                gate.open()
                await wait.until(
                    "the scale made while disconnected to be healed",
                    lambda: _is(replicas(cluster, ns), 1),
                    within=20,
                )
                await wait.until(
                    "the watches to come back (resumed, or listed again if they broke while "
                    "starting)",
                    lambda: watches.resumes + watches.relists > restarts,
                )
        finally:
            gated.close()


async def test_an_app_no_longer_assigned_is_no_longer_watched(
    cleanup: list[localkube.LocalCluster],
    cluster: kube.Kube,
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    ns = unique_name
    async with inproc.agent(cluster, tmp_path, resync=1) as run:
        watches = run.watches
        assert watches is not None
        inproc.assign(run, make_bundle(namespace(ns), configmap("a")), policy(self_heal=True))
        await wait.until("the first sync", lambda: synced(run, ns), within=60)
        assert [(s.rt.kind, s.namespace) for s in watches.watched()] == [
            ("ConfigMap", ns),
            ("Namespace", ""),
        ]
        run.local.remove(ns)  # as the hub connection does when the app is unassigned
        await wait.until("its watches to stop", lambda: not watches.watched(), within=10)
        assert watches.apps() == []


async def test_an_app_that_could_not_reach_the_api_server_recovers_without_the_resync(
    cleanup: list[localkube.LocalCluster],
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    """The resync is long now (600 s here): an app whose check found the API server gone is
    looked at again soon, so it reports Synced again within seconds once the server is back."""
    ns = unique_name
    with tcpgate.Gate(agentrun.apiserver(cleanup[0].kubeconfig)) as gate:
        gate.open()
        path = agentrun.kubeconfig_via(cleanup[0].kubeconfig, gate.port, tmp_path / "kc")
        gated = kube.connect(str(path))
        try:
            async with inproc.agent(gated, tmp_path / "state") as run:
                inproc.assign(run, make_bundle(namespace(ns), configmap("a")), policy())
                await wait.until("the first sync", lambda: synced(run, ns), within=60)
                gate.close()
                run.enqueue(ns)  # e.g. a new assignment arrives while the server is gone

                def failed() -> bool:
                    report = run.reports.get(ns)
                    return report is not None and report.sync == st.APPLY_FAILED

                await wait.until("the app to say it cannot reach the server", failed)
                gate.open()
                await wait.until("the app back in sync", lambda: synced(run, ns), within=20)
        finally:
            gated.close()
