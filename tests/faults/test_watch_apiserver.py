"""The kube-apiserver restarted under a running agent's watches (a dedicated localkube cluster):
the watches break, come back (resumed, or listed again when the restarted server no longer
keeps their version: 410 Gone), and drift made afterwards is healed by a watch, not the resync
timer (600 s here)."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import time

import pytest
import yaml

from fleetops.agent import kube
from fleetops.agent import status as st
from tests import localkube
from tests.agent.objects import configmap, deployment, namespace, policy
from tests.faults import harness
from tests.support import inproc, wait

pytestmark = pytest.mark.cluster

DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)


async def test_drift_is_healed_by_watches_after_an_apiserver_restart(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"{harness.prefix()}-watch"
    bundle = inproc.bundle(ns, namespace(ns), deployment("web", replicas=1), configmap("c", a="1"))
    with harness.dedicated_cluster(tmp_path / "localkube", "wk") as cluster:
        api = harness.ApiServer(tmp_path / "localkube", "wk")
        server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
        port = int(server["server"].rpartition(":")[2])
        client = kube.connect(str(cluster.kubeconfig), timeouts=kube.Timeouts(connect=2, read=5))

        async def replicas() -> int:
            live = await client.get(DEPLOY, namespace=ns, name="web")
            return int(live["spec"]["replicas"]) if live else -1

        try:
            async with inproc.agent(client, tmp_path / "state") as run:
                assert run.watches is not None
                inproc.assign(run, bundle, policy(self_heal=True))
                await wait.until(
                    "the first sync",
                    lambda: (r := run.reports.get(ns)) is not None and r.sync == st.SYNCED,
                    within=90,
                )
                relists = run.watches.relists
                api.stop()
                await wait.until("the API server to stop", lambda: not api.serving(port), within=60)
                api.kill()  # the rest of its graceful stop (waiting on watches) is not the fault
                await wait.until("the old API server to exit", lambda: not api.running(), within=30)
                api.start()
                restarted = time.monotonic()
                await wait.until(
                    "the restarted API server to answer",
                    client.server_version,
                    within=60,
                    every=0.2,
                    retry_on=(Exception,),
                )
                res = await asyncio.to_thread(
                    subprocess.run,
                    [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "-n", ns,
                     "scale", "deployment/web", "--replicas=4"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                assert res.returncode == 0, res.stderr
                scaled = time.monotonic()
                await wait.until(
                    "drift made after the restart to be healed by a watch",
                    lambda: _equals(replicas(), 1),
                    within=30,
                    every=0.05,
                    retry_on=(Exception,),
                )
                healed = time.monotonic()
                assert run.watches.relists + run.watches.resumes > relists
                harness.report(
                    capsys, "kube-apiserver restarted under watches", healed - restarted, [],
                    f"drift healed {healed - scaled:.1f} s after it was made; "
                    f"relists {run.watches.relists}, resumes {run.watches.resumes}",
                )  # fmt: skip
        finally:
            client.close()
            api.close()


async def _equals(value: object, want: object) -> bool:
    return await value == want  # type: ignore[misc]
