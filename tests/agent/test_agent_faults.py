"""`fleetops-agent run` through faults, as processes: a real hub, a real agent, the shared
clusters. The API server stops and comes back (a TCP gate in front of it, held by the test),
hangs (a listener that accepts and never answers), or refuses a least-privilege agent a
namespace; an app waits in a wave while another syncs. Every time the agent keeps running,
keeps its hub stream, and the hub shows each app's reason; it exits non-zero only when it
cannot start, and 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.agent.objects import configmap, deployment
from tests.support import agentrun, kubectl_run, leastpriv, tcpgate, wait

pytestmark = pytest.mark.cluster
EVERY = 0.3  # seconds between looks at the hub


@pytest.fixture
async def world(
    tmp_path: pathlib.Path, local_clusters: list[localkube.LocalCluster], unique_name: str
) -> AsyncIterator[agentrun.World]:
    made = agentrun.World.create(tmp_path)
    try:
        yield made
    finally:
        made.close()
        for ns in ("web", "stuck", "quick", "absent", "ok"):
            await kubectl_run.kubectl(
                local_clusters[0],
                "delete",
                "namespace",
                f"{unique_name}-{ns}",
                "--ignore-not-found",
                "--wait=false",
            )


@pytest.fixture
def c1(local_clusters: list[localkube.LocalCluster]) -> localkube.LocalCluster:
    return local_clusters[0]


@pytest.fixture
def gate(c1: localkube.LocalCluster) -> Iterator[tcpgate.Gate]:
    with tcpgate.Gate(agentrun.apiserver(c1.kubeconfig)) as g:
        yield g


def alive(world: agentrun.World) -> bool:
    return world.agent is not None and world.agent.proc.poll() is None


async def test_the_agent_outlives_a_stopped_api_server_and_the_hub_shows_why(
    world: agentrun.World,
    gate: tcpgate.Gate,
    c1: localkube.LocalCluster,
    tmp_path: pathlib.Path,
    unique_name: str,
) -> None:
    app = f"{unique_name}-web"
    world.repo.write("apps/web/cm.yaml", configmap("web", level="info"))
    rev = world.repo.commit("web")
    gate.open().close()  # the API server is down when the agent starts
    kubeconfig = agentrun.kubeconfig_via(c1.kubeconfig, gate.port, tmp_path / "kubeconfig")
    world.start_hub([agentrun.app(app, "apps/web", app)])
    agent = world.start_agent(kubeconfig)
    down = (
        f"cannot reach the Kubernetes API server at https://127.0.0.1:{gate.port}: "
        "connection refused"
    )

    def says_down() -> bool:
        assert alive(world), f"the agent exited ({agent.proc.returncode}):\n{world.logs()}"
        return agentrun.failed_with(world.cell(app), down) and world.connected()

    await wait.until(
        f"the app's reason {down!r}, the cluster connected", says_down, within=60, every=EVERY
    )
    cell = world.cell(app)
    assert cell is not None and cell.health == types_pb2.HEALTH_STATUS_UNKNOWN
    assert "supervising hub connection, app workers, resync, certificate renewal" in agent.tail()

    gate.open()
    started = time.monotonic()
    await wait.until(
        "the app synced once the API server answers",
        lambda: agentrun.synced(world.cell(app), rev),
        within=60,
        every=EVERY,
    )
    back = time.monotonic() - started

    gate.close()  # stopped under the running agent: its kept-alive connections are reset
    started = time.monotonic()
    await wait.until("the reason again, the hub stream kept", says_down, within=60, every=EVERY)
    gone = time.monotonic() - started

    gate.open()
    await wait.until(
        "synced again", lambda: agentrun.synced(world.cell(app), rev), within=60, every=EVERY
    )
    print(
        f"API server stopped: the app's reason at the hub after {gone:.1f} s; "
        f"back: synced after {back:.1f} s"
    )
    agent.stop()
    assert agent.proc.returncode == 0, agent.tail()  # SIGTERM is the one way to end it


async def test_a_hung_api_server_is_the_apps_reason_within_the_timeout(
    world: agentrun.World, c1: localkube.LocalCluster, tmp_path: pathlib.Path, unique_name: str
) -> None:
    app = f"{unique_name}-web"
    world.repo.write("apps/web/cm.yaml", configmap("web", level="info"))
    world.repo.commit("web")
    with tcpgate.Gate() as hung:
        hung.hang()  # accepts every connection, never sends a byte
        kubeconfig = agentrun.kubeconfig_via(c1.kubeconfig, hung.port, tmp_path / "kubeconfig")
        world.start_hub([agentrun.app(app, "apps/web", app)])
        started = time.monotonic()
        agent = world.start_agent(kubeconfig)
        hung_words = (
            f"https://127.0.0.1:{hung.port}: it accepted the connection but sent no answer in time"
        )

        def says_hung() -> bool:
            assert alive(world), f"the agent exited ({agent.proc.returncode}):\n{world.logs()}"
            return agentrun.failed_with(world.cell(app), hung_words) and world.connected()

        await wait.until(
            "the hung API server as the app's reason", says_hung, within=60, every=EVERY
        )
        print(
            f"hung API server: the app's reason at the hub {time.monotonic() - started:.1f} s "
            "after the agent started (connect timeout 5 s)"
        )
        agent.stop()
    assert agent.proc.returncode == 0, agent.tail()


async def test_a_least_privilege_agent_reports_the_namespace_it_was_not_granted(
    world: agentrun.World, c1: localkube.LocalCluster, tmp_path: pathlib.Path, unique_name: str
) -> None:
    ok, absent = f"{unique_name}-ok", f"{unique_name}-absent"
    account = await leastpriv.account(
        c1, prefix=unique_name, granted=[ok], out=tmp_path / "sa.kubeconfig"
    )
    try:
        world.repo.write("apps/web/cm.yaml", configmap("web", level="info"))
        rev = world.repo.commit("web")
        world.start_hub(
            [agentrun.app(ok, "apps/web", ok), agentrun.app(absent, "apps/web", absent)]
        )
        world.start_agent(account.kubeconfig, f"--inventory-namespace={account.agent_namespace}")
        await wait.until(
            "the granted app synced",
            lambda: agentrun.synced(world.cell(ok), rev),
            within=60,
            every=EVERY,
        )
        refused = await wait.until(
            "the ungranted app's ApplyFailed with what to do",
            lambda: (
                agentrun.failed_with(
                    world.cell(absent),
                    f"cannot create namespace {absent} for app {absent}: namespaces is forbidden",
                    f"`fleetops-hub cluster add {agentrun.CLUSTER} --namespaces {absent},...`",
                )
                and world.cell(absent)
            ),
            within=60,
            every=EVERY,
        )
        assert refused.applied_revision == rev  # the revision it tried, not "waiting for the agent"
    finally:
        await account.remove()


async def test_an_app_stuck_in_a_wave_holds_no_other_app(
    world: agentrun.World, c1: localkube.LocalCluster, unique_name: str
) -> None:
    stuck, quick = f"{unique_name}-stuck", f"{unique_name}-quick"
    never = deployment("never", pod={"nodeSelector": {"fleetops.io/nowhere": "true"}})
    never["metadata"]["annotations"] = {"fleetops.io/sync-wave": "0"}
    after = configmap("after")
    after["metadata"]["annotations"] = {"fleetops.io/sync-wave": "1"}
    world.repo.write("apps/stuck/all.yaml", [never, after])
    world.repo.write("apps/quick/cm.yaml", configmap("quick", color="blue"))
    world.repo.commit("a wave that never gets healthy, and a quick app")
    world.start_hub(
        [agentrun.app(stuck, "apps/stuck", stuck), agentrun.app(quick, "apps/quick", quick)]
    )
    world.start_agent(c1.kubeconfig, "--wave-timeout=300")

    async def waiting_in_the_wave() -> bool:
        cell = world.cell(stuck)  # applied wave 0, no report yet: it waits for its health
        pending = cell is not None and cell.sync == types_pb2.SYNC_STATUS_PENDING
        return pending and await exists(c1, "deployment", "never", "-n", stuck)

    await wait.until(
        "the stuck app waiting in its wave", waiting_in_the_wave, within=60, every=EVERY
    )
    world.repo.write("apps/quick/cm.yaml", configmap("quick", color="green"))
    rev = world.repo.commit("the quick app changes while the other waits")
    started = time.monotonic()
    await wait.until(
        "the quick app synced and reported",
        lambda: agentrun.synced(world.cell(quick), rev),
        within=60,
        every=EVERY,
    )
    print(
        "one app waiting in a wave: another app's commit synced in "
        f"{time.monotonic() - started:.1f} s"
    )
    cell = world.cell(stuck)
    assert cell is not None and cell.sync == types_pb2.SYNC_STATUS_PENDING, world.logs()
    got = await kubectl_run.kubectl(
        c1, "get", "configmap", "after", "-n", stuck, "--ignore-not-found", "-o", "name"
    )
    assert got.stdout == "", "wave 1 was applied before wave 0 got healthy"


async def exists(cluster: localkube.LocalCluster, *what: str) -> bool:
    """`kubectl get` finds it."""
    done = await asyncio.to_thread(
        subprocess.run,
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "get", *what],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


async def test_the_agent_exits_non_zero_when_it_cannot_start(
    world: agentrun.World, c1: localkube.LocalCluster, unique_name: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        world.repo.write("apps/web/cm.yaml", configmap("web"))
        world.repo.commit("web")
        world.start_hub([agentrun.app(f"{unique_name}-web", "apps/web", f"{unique_name}-web")])
        agent = world.start_agent(c1.kubeconfig, f"--health-listen=127.0.0.1:{port}")
        await wait.until(
            "the agent to exit", lambda: agent.proc.poll() is not None, within=60, every=EVERY
        )
    assert agent.proc.returncode == 1, agent.tail()
    assert f"fleetops-agent: --health-listen 127.0.0.1:{port}: " in agent.tail()
