"""Benchmark: the TUI with 1,000 clusters x 20 apps and 200 status changes a second.

Run: .venv/bin/python -m tests.bench.bench_tui [--clusters 1000 --apps 20 --rate 200]

The hub is a FAKE (`BusyHubClient`): it serves one big snapshot, then streams random status
changes at the given rate, in the same process; this benchmark is about the TUI. Headless at
200x50, it sends `down` 100 times at random intervals, the way a terminal delivers a key
(into the app's driver queue), and measures until the first frame written to the terminal
that shows the cursor on its new row (the app's display hook, wrapped). Pilot's own
press/pause are not used for timing: they wait for the whole process to go idle in 20 ms
steps, which a busy feed never is. Also the process's CPU share over the run (TUI and fake
feed together) and, for comparison, the fake feed alone. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from collections.abc import AsyncIterator

from textual import events

from fleetops.proto.v1 import fleet_pb2, types_pb2
from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui.widgets.matrix import Matrix

SYNCS = [types_pb2.SYNC_STATUS_SYNCED] * 6 + [
    types_pb2.SYNC_STATUS_OUT_OF_SYNC,
    types_pb2.SYNC_STATUS_PENDING,
]
HEALTHS = [types_pb2.HEALTH_STATUS_HEALTHY] * 6 + [
    types_pb2.HEALTH_STATUS_PROGRESSING,
    types_pb2.HEALTH_STATUS_DEGRADED,
]


class BusyHubClient(tui_client.HubClient):
    """A fake hub: a big fleet and a steady stream of changes."""

    def __init__(self, clusters: int, apps: int, rate: float) -> None:
        super().__init__(tui_client.Credentials("fake:0", b"", "fake"))
        self.n_clusters, self.n_apps, self.rate = clusters, apps, rate
        self.sent = 0
        self.flowing = asyncio.Event()  # the baseline measures with the feed held

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        rnd = random.Random(7)
        snap = fleet_pb2.Snapshot(version=1)
        clusters = [f"cluster-{i:04d}" for i in range(self.n_clusters)]
        apps = [f"app-{j:02d}" for j in range(self.n_apps)]
        for c in clusters:
            snap.clusters.add(name=c, connectivity=types_pb2.CONNECTIVITY_CONNECTED)
        for a in apps:
            snap.apps.add(name=a, head_revision="ab" * 20)
        for c in clusters:
            for a in apps:
                snap.statuses.add(
                    cluster=c,
                    app=a,
                    desired_revision="ab" * 20,
                    applied_revision="ab" * 20,
                    sync=types_pb2.SYNC_STATUS_SYNCED,
                    health=types_pb2.HEALTH_STATUS_HEALTHY,
                )
        yield fleet_pb2.FleetChange(version=1, snapshot=snap)
        version = 1
        batch = max(1, int(self.rate / 20))  # 20 batches a second
        next_at = 0.0
        while True:
            await self.flowing.wait()
            # paced by the clock, not by sleeps, so a busy TUI does not slow the feed down
            now = time.perf_counter()
            next_at = max(next_at + batch / self.rate, now - 1.0)
            await asyncio.sleep(max(0.0, next_at - now))
            for _ in range(batch):
                version += 1
                cell = fleet_pb2.ClusterAppStatus(
                    cluster=rnd.choice(clusters),
                    app=rnd.choice(apps),
                    desired_revision="ab" * 20,
                    applied_revision="ab" * 20,
                    sync=rnd.choice(SYNCS),
                    health=rnd.choice(HEALTHS),
                )
                self.sent += 1
                yield fleet_pb2.FleetChange(version=version, status=cell)

    async def close(self) -> None:
        pass


async def feed_alone(clusters: int, apps: int, rate: float, seconds: float = 5.0) -> float:
    """CPU share of the fake feed with no TUI consuming it, to subtract from the total."""
    fake = BusyHubClient(clusters, apps, rate)
    fake.flowing.set()
    stream = fake.watch()
    await anext(stream)  # the snapshot
    start_wall, start = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    while time.perf_counter() - start_wall < seconds:
        await anext(stream)
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime)
    return cpu / (time.perf_counter() - start_wall) * 100


async def run(clusters: int, apps: int, rate: float) -> str:
    fake = BusyHubClient(clusters, apps, rate)
    app = tui_app.make_app(client=fake)
    async with app.run_test(size=(200, 50)) as pilot:
        while not (
            app.screen.query("#matrix")
            and app.screen.query_one("#matrix", Matrix).row_count == clusters
        ):
            await pilot.pause(0.1)
        await pilot.pause(1.0)

        table = app.screen.query_one("#matrix", Matrix)
        shown = asyncio.Event()
        wanted = {"row": -1, "at": 0.0}
        display = app._display

        def timed_display(screen: object, renderable: object) -> None:
            display(screen, renderable)  # type: ignore[arg-type]
            if table.cursor_row == wanted["row"] and not shown.is_set():
                wanted["at"] = time.perf_counter()
                shown.set()

        app._display = timed_display  # type: ignore[method-assign]

        async def presses(n: int) -> list[float]:
            out = []
            rnd = random.Random(3)
            for _ in range(n):
                if table.cursor_row >= clusters - 2:
                    table.move_cursor(row=0)
                    await pilot.pause(0.1)
                wanted["row"] = table.cursor_row + 1
                shown.clear()
                t0 = time.perf_counter()
                key = events.Key("down", None)
                key.set_sender(app)
                app._driver.send_message(key)  # type: ignore[union-attr]
                await asyncio.wait_for(shown.wait(), timeout=10)
                out.append((wanted["at"] - t0) * 1000)
                await asyncio.sleep(rnd.uniform(0.02, 0.08))
            return out

        baseline = sorted(await presses(30))  # the same presses with the feed held
        fake.flowing.set()
        await pilot.pause(1.0)
        start_wall, start_cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        sent_before = fake.sent
        latencies = await presses(100)
        wall = time.perf_counter() - start_wall
        end_cpu = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (end_cpu.ru_utime - start_cpu.ru_utime) + (end_cpu.ru_stime - start_cpu.ru_stime)
        changes = (fake.sent - sent_before) / wall
    lat = sorted(latencies)
    base = statistics.median(baseline)
    return (
        f"RESULT idle fleet: key press to repaint median {base:.1f} ms; "
        f"{clusters} clusters x {apps} apps at {changes:.0f} changes/s: median "
        f"{statistics.median(lat):.1f} ms, p90 {lat[int(len(lat) * 0.9)]:.1f} ms, max {lat[-1]:.1f} ms; "
        f"busy/idle ratio {statistics.median(lat) / base:.2f}; "
        f"CPU {cpu / wall * 100:.0f}% of one core (TUI and fake feed; the feed alone "
        f"{await feed_alone(clusters, apps, rate):.0f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200)
    ns = parser.parse_args()
    print(asyncio.run(run(ns.clusters, ns.apps, ns.rate)), flush=True)


if __name__ == "__main__":
    main()
