"""Fault: the hub is killed with SIGKILL, three times, while it plans a new commit and while
agents report it. After each kill its SQLite file passes `PRAGMA integrity_check`, everything
it acknowledged before the kill (history entries read back, rollback pins the operator got
an answer for, assignments agents were given) is still there, and after a restart on the same
ports and data the agents reconnect and the fleet reconverges to the head commit (or to the
pin)."""

from __future__ import annotations

import pathlib
import time

import pytest

from tests import localkube
from tests.faults import harness
from tests.support import fleet, wait

pytestmark = pytest.mark.cluster
CLUSTERS = ("c1", "c2")


def files(repo: fleet.Repo, n: int) -> None:
    repo.write("apps/web/deployment.yaml", harness.deployment("web"))
    repo.write("apps/web/configmap.yaml", harness.configmap("web-config", n=str(n)))
    repo.write(
        "apps/cfg/configmaps.yaml",
        [harness.configmap(f"cfg-{i}", n=str(n), i=str(i)) for i in range(3)],
    )


async def test_kill_9_the_hub_while_it_plans_and_while_agents_report(
    local_clusters: list[localkube.LocalCluster],
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = harness.prefix()
    web, cfg = f"{p}-web", f"{p}-cfg"

    def apps(_url: str) -> list[dict[str, object]]:
        return [harness.app(web, "apps/web"), harness.app(cfg, "apps/cfg")]

    kube = {c.name: c.kubeconfig for c in local_clusters}
    async with harness.world(tmp_path, apps=apps, clusters=CLUSTERS, files=files) as w:
        revs = [fleet.git(w.repo.work, "rev-parse", "HEAD")]
        for c in CLUSTERS:
            w.add_agent(c, kube[c])
        cells = [(c, a) for c in CLUSTERS for a in (web, cfg)]
        await wait.until(
            "first convergence",
            lambda: harness.converged(w, dict.fromkeys(cells, revs[0])),
            within=120,
            every=harness.EVERY,
            retry_on=harness.RESTARTING,
            explain=w.describe,
        )

        acknowledged: set[int] = set()  # history entries read back before a kill
        pins: dict[tuple[str, str], str] = {}  # (app, cluster) -> revision, as answered
        lost: list[str] = []
        times: list[float] = []
        # what the operator does before each kill, and what the kill interrupts
        steps = [
            ("pin web on c2 to the first commit", "planning"),
            ("unpin web on c2", "reports"),
            ("pin cfg everywhere to the current head", "planning"),
        ]
        for i, (action, moment) in enumerate(steps):
            client = w.client()
            if i == 0:
                client.rollback(web, revs[0], cluster="c2")
                pins[(web, "c2")] = revs[0]
            elif i == 1:
                client.unpin(web, cluster="c2")
                del pins[(web, "c2")]
            else:
                client.rollback(cfg, revs[-1])
                pins[(cfg, "")] = revs[-1]
            acknowledged |= {e.id for e in client.history()}
            desired = {k: s.desired_revision for k, s in client.cells().items()}

            files(w.repo, i + 1)
            head = w.repo.commit(f"fault suite: commit {i + 1}")
            revs.append(head)
            hub_log, offset = w.hub.process.log, w.hub.process.log.stat().st_size

            def planning(sha: str = head, log: pathlib.Path = hub_log, at: int = offset) -> bool:
                with open(log, errors="replace") as f:
                    f.seek(at)
                    return f"new revision {sha[:8]}" in f.read()

            def reporting(sha: str = head) -> bool:  # the first agent reported it, others follow
                return any(s.applied_revision == sha for s in w.cells().values())

            await wait.until(
                f"the hub {moment} commit {i + 1}",
                planning if moment == "planning" else reporting,
                within=60,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            harness.kill9(w.hub.process)
            started = time.monotonic()

            # the hub is dead: its files as the kill left them
            copy = harness.copy_db(w.hub.data, tmp_path / f"after-kill-{i + 1}")
            check = harness.integrity(copy)
            if check != "ok":
                lost.append(f"kill {i + 1}: integrity_check says {check}")
            ids = {r[0] for r in harness.query(copy, "SELECT id FROM events")}
            if missing := acknowledged - ids:
                lost.append(f"kill {i + 1}: events {sorted(missing)} gone from hub.db")
            stored_pins = {
                (a, c): r
                for a, c, r in harness.query(copy, "SELECT app, cluster, revision FROM pins")
            }
            if stored_pins != pins:
                lost.append(f"kill {i + 1}: pins in hub.db are {stored_pins}, answered {pins}")
            stored = {
                (c, a): r
                for c, a, r in harness.query(copy, "SELECT cluster, app, revision FROM assignments")
            }
            at_head = sum(r == head for r in stored.values())
            for key, rev in desired.items():
                if stored.get(key) not in (rev, head):
                    lost.append(
                        f"kill {i + 1}: assignment {key} is {stored.get(key)!r} in hub.db, "
                        f"it was {rev[:8]} before the kill"
                    )

            w.hub = await harness.restart_hub(w.hub, w.config)
            want = {(c, a): pins.get((a, c)) or pins.get((a, "")) or head for c, a in cells}

            def back(want: dict[tuple[str, str], str] = want) -> bool:
                return harness.connected(w, CLUSTERS) and harness.converged(w, want)

            await wait.until(
                f"reconnection and reconvergence after kill {i + 1}",
                back,
                within=120,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
                explain=w.describe,
            )
            times.append(time.monotonic() - started)
            after = {e.id for e in w.client().history()}
            if missing := acknowledged - after:
                lost.append(f"kill {i + 1}: history lost events {sorted(missing)}")
            with capsys.disabled():
                print(
                    f"\n  kill -9 {i + 1} ({moment} {head[:8]}, after: {action}): "
                    f"hub.db held {at_head}/{len(stored)} assignments at it; reconverged "
                    f"{times[-1]:.1f} s after the kill",
                    flush=True,
                )

        harness.report(capsys, "hub-kill-9 x3", max(times), lost, "slowest of three")
        assert not lost, "\n".join(lost)
