"""Fault: the agent is killed with SIGKILL between writing an app's inventory and applying its
bundle. A commit replaces 10 of an app's 40 ConfigMaps and adds 200; a watch on the app's
inventory ConfigMap kills the agent the moment the inventory of the new sync lands (the union
of old and new objects, no bundle digest yet), while the objects are being applied. Right
after the kill nothing in the app's namespace is missing from the inventory (no orphan); after
a restart the app converges, the 10 objects that left Git are pruned, and none of the 30 that
stayed was ever deleted (same uid): no extra prune."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
import time
from typing import Any

import pytest
from kubernetes import client as _client
from kubernetes import config as _config
from kubernetes import watch as _watch

from tests import localkube
from tests.faults import harness
from tests.support import fleet, wait

pytestmark = pytest.mark.cluster
kclient: Any = _client  # the kubernetes client is untyped
kconfig: Any = _config
kwatch: Any = _watch
CLUSTER = "c1"
INVENTORY_NS = "fleetops-system"
FIRST = [f"cm-{i:03d}" for i in range(40)]
SECOND = [f"cm-{i:03d}" for i in range(10, 240)]


def files(repo: fleet.Repo, n: int) -> None:
    names = FIRST if n == 0 else SECOND
    repo.write("apps/many/configmaps.yaml", [harness.configmap(m, n=str(n)) for m in names])


class KillOnInventory:
    """Watch the app's inventory ConfigMap; SIGKILL `pid` when a sync's first inventory
    write (no bundle digest, naming `marker`) arrives."""

    def __init__(self, kubeconfig: pathlib.Path, app: str, pid: int, marker: str) -> None:
        self.api = kconfig.new_client_from_config(config_file=str(kubeconfig))
        self.app, self.pid, self.marker = app, pid, marker
        self.watching = threading.Event()
        self.fired = threading.Event()
        self.inventory: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._watch = kwatch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        core = kclient.CoreV1Api(self.api)
        try:
            for event in self._watch.stream(
                core.list_namespaced_config_map,
                INVENTORY_NS,
                field_selector=f"metadata.name=fleetops-inventory-{self.app}",
                timeout_seconds=120,
            ):
                self.watching.set()
                data = (event["object"].data or {}).get("inventory.json", "{}")
                doc = json.loads(data)
                names = {r["name"] for r in doc.get("resources", [])}
                if doc.get("bundleDigest") == "" and self.marker in names:
                    os.kill(self.pid, signal.SIGKILL)
                    self.inventory = doc
                    self.fired.set()
                    return
        except BaseException as e:  # reported by the test, never a stray thread exception
            self.error = e
            self.watching.set()

    def close(self) -> None:
        self._watch.stop()
        self._thread.join(timeout=130)
        self.api.close()


async def test_kill_9_the_agent_between_inventory_write_and_apply(
    local_clusters: list[localkube.LocalCluster],
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = harness.prefix()
    name = f"{p}-many"
    kube = {c.name: c.kubeconfig for c in local_clusters}

    def apps(_url: str) -> list[dict[str, object]]:
        return [harness.app(name, "apps/many")]

    def objects(w: harness.World) -> dict[str, str]:
        res = w.kubectl(CLUSTER, "-n", name, "get", "configmaps", "-o", "json")
        assert res.returncode == 0, res.stderr
        items = json.loads(res.stdout)["items"]
        return {
            i["metadata"]["name"]: i["metadata"]["uid"]
            for i in items
            if i["metadata"]["name"] != "kube-root-ca.crt"
        }

    def inventory(w: harness.World) -> set[str]:
        res = w.kubectl(
            CLUSTER, "-n", INVENTORY_NS, "get", "configmap", f"fleetops-inventory-{name}",
            "-o", "jsonpath={.data.inventory\\.json}",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return {r["name"] for r in json.loads(res.stdout)["resources"] if r["kind"] == "ConfigMap"}

    async with harness.world(tmp_path, apps=apps, clusters=[CLUSTER], files=files) as w:
        first = fleet.git(w.repo.work, "rev-parse", "HEAD")
        agent = w.add_agent(CLUSTER, kube[CLUSTER])
        await wait.until(
            "the first 40 objects to converge",
            lambda: harness.converged(w, {(CLUSTER, name): first}),
            within=90,
            every=harness.EVERY,
            retry_on=harness.RESTARTING,
            explain=w.describe,
        )
        before = objects(w)
        assert sorted(before) == FIRST

        killer = KillOnInventory(kube[CLUSTER], name, agent.proc.pid, SECOND[-1])
        killer.start()
        try:
            await wait.until(
                "the inventory watch",
                killer.watching.is_set,
                within=30,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            assert killer.error is None, killer.error
            files(w.repo, 1)
            second = w.repo.commit("fault suite: 200 more objects, 10 fewer")
            await wait.until(
                "the agent's inventory write of the new sync (then SIGKILL)",
                lambda: killer.fired.is_set() or killer.error is not None,
                within=90,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            assert killer.error is None, killer.error
        finally:
            killer.close()
        agent.proc.wait(timeout=30)
        killed = time.monotonic()
        assert agent.proc.returncode == -signal.SIGKILL

        lost: list[str] = []
        at_kill = objects(w)
        recorded = inventory(w)
        new = set(SECOND) - set(FIRST)
        applied = len(new & set(at_kill))
        if orphans := set(at_kill) - recorded:
            lost.append(f"after the kill, objects missing from the inventory: {sorted(orphans)}")
        if gone := set(FIRST) - set(at_kill):
            lost.append(f"deleted before the sync finished: {sorted(gone)}")

        w.restart_agent(CLUSTER)
        await wait.until(
            "the restarted agent to converge the second commit",
            lambda: harness.converged(w, {(CLUSTER, name): second}),
            within=120,
            every=harness.EVERY,
            retry_on=harness.RESTARTING,
            explain=w.describe,
        )
        took = time.monotonic() - killed
        after = objects(w)
        final = inventory(w)
        if orphans := set(after) - final:
            lost.append(f"orphans (not in the inventory): {sorted(orphans)}")
        if missing := set(SECOND) - set(after):
            lost.append(f"missing after convergence: {sorted(missing)}")
        if recreated := [n for n in SECOND if n in before and after.get(n) != before[n]]:
            lost.append(f"deleted and made again (extra prune): {recreated}")
        if stale := set(after) - set(SECOND):
            lost.append(f"left behind (not pruned): {sorted(stale)}")
        if final != set(SECOND):
            lost.append(f"the inventory is not the bundle: {sorted(final ^ set(SECOND))}")

        harness.report(
            capsys, "agent-kill-9 between inventory and apply", took, lost,
            f"killed with {applied}/{len(new)} new objects applied",
        )  # fmt: skip
        assert not lost, "\n".join(lost)
