"""Faults of the Kubernetes API server under a running agent.

- Stopped and started again (a dedicated localkube cluster): the agent keeps running, the
  app shows a reason while the API server is down (a commit lands meanwhile), and once it is
  back the app reconverges to the new commit and drift is healed again.
- Hung (the agent's kubeconfig points at a TCP listener that accepts and never answers, a
  proxy the test controls in front of a real API server): the agent stays up and the app gets
  a reason; when the listener starts answering, the app converges.
"""

from __future__ import annotations

import pathlib
import time

import pytest
import yaml

from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.faults import harness
from tests.support import fleet, tcpproxy, wait

pytestmark = pytest.mark.cluster  # the shared clusters, or a localkube cluster of its own


def files(repo: fleet.Repo, n: int) -> None:
    repo.write("apps/web/deployment.yaml", harness.deployment("web"))
    repo.write("apps/web/configmap.yaml", harness.configmap("web-config", n=str(n)))


def replicas(w: harness.World, cluster: str, ns: str) -> int:
    res = w.kubectl(
        cluster, "-n", ns, "get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"
    )
    return int(res.stdout) if res.returncode == 0 and res.stdout else -1


async def test_kube_apiserver_stopped_and_restarted_under_a_running_agent(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = f"{harness.prefix()}-web"

    def apps(_url: str) -> list[dict[str, object]]:
        return [harness.app(web, "apps/web")]

    with harness.dedicated_cluster(tmp_path / "localkube", "fk") as cluster:
        api = harness.ApiServer(tmp_path / "localkube", "fk")
        try:
            async with harness.world(tmp_path, apps=apps, clusters=["fk"], files=files) as w:
                first = fleet.git(w.repo.work, "rev-parse", "HEAD")
                agent = w.add_agent("fk", cluster.kubeconfig, extra=["--kube-timeout", "5"])
                await wait.until(
                    "first convergence",
                    lambda: harness.converged(w, {("fk", web): first}),
                    within=120,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )

                server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
                port = int(server["server"].rpartition(":")[2])
                api.stop()
                await wait.until(
                    "the API server to stop serving",
                    lambda: not api.serving(port),
                    within=60,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )
                stopped = time.monotonic()
                files(w.repo, 1)
                second = w.repo.commit("fault suite: a commit while the API server is down")

                def reason() -> str:
                    """The agent's reason for the new commit, naming the API server it cannot
                    reach (what a person can act on), not just the hub's "waiting"."""
                    cell = w.cells().get(("fk", web))
                    if cell is None or cell.desired_revision != second:
                        return ""
                    failed = cell.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
                    return cell.reason if failed and f"127.0.0.1:{port}" in cell.reason else ""

                why = await wait.until(
                    "the app to say it cannot reach the API server",
                    reason,
                    within=90,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )
                sync = types_pb2.SyncStatus.Name(w.cells()[("fk", web)].sync)
                assert harness.alive(agent), f"the agent exited:\n{agent.tail()}"
                # and it reconnects to a restarted hub while its API server is still down
                w.hub.process.stop()
                w.hub = await harness.restart_hub(w.hub, w.config)
                await wait.until(
                    "the agent to reconnect to the restarted hub with its API server down",
                    lambda: harness.connected(w, ["fk"]),
                    within=60,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )
                assert harness.alive(agent), f"the agent exited:\n{agent.tail()}"
                assert not api.serving(port)

                api.kill()  # the rest of its graceful stop (waiting on watches) is not the fault
                await wait.until(
                    "the old API server to exit",
                    lambda: not api.running(),
                    within=30,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )
                api.start()
                w.extra_logs.append(api.log)
                restarted = time.monotonic()
                await wait.until(
                    "reconvergence to the commit made while the API server was down",
                    lambda: harness.converged(w, {("fk", web): second}),
                    within=120,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )
                took = time.monotonic() - restarted
                scaled = w.kubectl("fk", "-n", web, "scale", "deployment/web", "--replicas=3")
                assert scaled.returncode == 0, scaled.stderr
                await wait.until(
                    "drift made after the restart to be healed",
                    lambda: replicas(w, "fk", web) == 1,
                    within=30,
                    every=harness.EVERY,
                    retry_on=harness.RESTARTING,
                    explain=w.describe,
                )
                assert harness.alive(agent), f"the agent exited:\n{agent.tail()}"
                harness.report(
                    capsys, "kube-apiserver stopped and restarted", took, [],
                    f"down {restarted - stopped:.1f} s; meanwhile the app said {sync}: {why}",
                )  # fmt: skip
        finally:
            api.close()


async def test_a_hung_api_server_is_the_agents_kubeconfig_server(
    local_clusters: list[localkube.LocalCluster],
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    web = f"{harness.prefix()}-web"
    real = {c.name: c.kubeconfig for c in local_clusters}["c3"]
    doc = yaml.safe_load(real.read_text())
    server = doc["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").rpartition(":")

    def apps(_url: str) -> list[dict[str, object]]:
        return [harness.app(web, "apps/web")]

    with tcpproxy.Partition((host, int(port))) as hung:
        hung.cut()  # accepts, never answers
        doc["clusters"][0]["cluster"]["server"] = f"https://{hung.address}"
        kubeconfig = tmp_path / "hung-kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(doc))
        async with harness.world(tmp_path, apps=apps, clusters=["hung"], files=files) as w:
            head = fleet.git(w.repo.work, "rev-parse", "HEAD")
            agent = w.add_agent("hung", kubeconfig, extra=["--kube-timeout", "3"])
            started = time.monotonic()

            def failed() -> str:
                cell = w.cells().get(("hung", web))
                if cell is None or cell.sync != types_pb2.SYNC_STATUS_APPLY_FAILED:
                    return ""
                return cell.reason

            why = await wait.until(
                "the app to say the API server does not answer",
                failed,
                within=90,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            said = time.monotonic() - started
            assert hung.accepted >= 1, "the agent never dialled the hung API server"
            assert harness.connected(w, ["hung"]), "the agent is not connected to the hub"
            assert harness.alive(agent), f"the agent exited:\n{agent.tail()}"

            hung.heal()
            answering = time.monotonic()
            await wait.until(
                "convergence once the API server answers",
                lambda: harness.converged(w, {("hung", web): head}),
                within=120,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            took = time.monotonic() - answering
            assert harness.alive(agent), f"the agent exited:\n{agent.tail()}"
            harness.report(
                capsys, "hung kube-apiserver", took, [],
                f"ApplyFailed {said:.1f} s after the agent started: {why}",
            )  # fmt: skip
