"""Fault: a Git server that accepts the connection and never answers (a loopback listener,
as one of the hub's repo URLs over http). While the hub's fetch of it hangs, the hub keeps
answering the fleet API (`fleetops-hub status`, `history`, an operator's sync), a new agent
registers, connects and converges its apps from the other repo; the hung repo then shows an
error (also in /metrics), and the hub still stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import pathlib
import time
import urllib.request

import pytest

from tests import localkube
from tests.faults import harness
from tests.support import fleet, tcpproxy, wait

pytestmark = pytest.mark.cluster
CLUSTER = "c1"
GIT_TIMEOUT = 8  # fleetops-hub serve --git-timeout: the hung fetch is an error after this


def files(repo: fleet.Repo, n: int) -> None:
    repo.write("apps/web/configmap.yaml", harness.configmap("web-config", n=str(n)))


def metrics(hub: fleet.Hub) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def test_a_git_server_that_never_answers(
    local_clusters: list[localkube.LocalCluster],
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = harness.prefix()
    good, stuck = f"{p}-good", f"{p}-stuck"
    kube = {c.name: c.kubeconfig for c in local_clusters}

    with tcpproxy.Silent() as silent:

        def apps(_url: str) -> list[dict[str, object]]:
            return [harness.app(good, "apps/web"), harness.app(stuck, "apps/web", repo="stalled")]

        stalled = {"stalled": f"http://{silent.address}/fleet.git"}
        async with harness.world(
            tmp_path,
            apps=apps,
            clusters=[CLUSTER],
            files=files,
            repos=stalled,
            hub_args=["--git-timeout", str(GIT_TIMEOUT)],
        ) as w:
            head = fleet.git(w.repo.work, "rev-parse", "HEAD")
            await wait.until(
                "the hub to dial the silent Git server",
                lambda: silent.accepted >= 1,
                within=30,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            hanging = time.monotonic()

            def repo_error() -> str:
                snap = w.client().snapshot()
                return next((r.error for r in snap.repos if r.name == "stalled"), "")

            status = harness.hub_cli(w.hub, "status", "--output", "json")
            assert status.returncode == 0, status.stderr
            assert "stalled" in {r["name"] for r in json.loads(status.stdout)["repos"]}
            history = harness.hub_cli(w.hub, "history", "--output", "json")
            assert history.returncode == 0, history.stderr
            w.add_agent(CLUSTER, kube[CLUSTER])
            await wait.until(
                "the new agent to converge the other repo's app while the fetch hangs",
                lambda: (
                    harness.connected(w, [CLUSTER])
                    and harness.converged(w, {(CLUSTER, good): head})
                ),
                within=60,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            took = time.monotonic() - hanging
            still_hanging = not repo_error()
            sync = harness.hub_cli(w.hub, "sync", good)
            assert sync.returncode == 0, sync.stderr

            error = await wait.until(
                "the hung repo to show an error",
                repo_error,
                within=120,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            errored = time.monotonic() - hanging
            assert 'fleetops_repo_fetch_ok{repo="stalled"} 0' in metrics(w.hub)
            assert harness.converged(w, {(CLUSTER, good): head})

            hub = w.hub.process
            hub.stop()  # SIGTERM, SIGKILL only after 15 s
            assert hub.proc.returncode == 0, (
                f"the hub did not stop on SIGTERM (exit {hub.proc.returncode}):\n{hub.tail()}"
            )
            harness.report(
                capsys, "git server never answers", took, [],
                f"agent converged {'while the fetch still hung' if still_hanging else 'after'}; "
                f"repo error after {errored:.1f} s: {error}",
            )  # fmt: skip
