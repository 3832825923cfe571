"""The demo's fleet in words: per cluster how many apps run Synced and Healthy, the table of
every (cluster, app), one line saying where every step of the sample apps' rollout stands,
whether a revision has gone through every step, and the order in which the clusters were
given it (the hub's history).

Pure: protobuf messages in, text out. It never talks to the hub (demo.py does) and never
decides anything the hub decides; it only reads what the hub reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fleetops.proto.v1 import fleet_pb2, types_pb2

SUCCEEDED = "Succeeded"
ENDED_BADLY = ("Failed", "Halted", "Aborted")
BAKE_STEP = 5  # seconds: bake time left is shown rounded up to this, so lines change slowly


def ready(s: fleet_pb2.ClusterAppStatus) -> bool:
    return (
        s.sync == types_pb2.SYNC_STATUS_SYNCED
        and s.health == types_pb2.HEALTH_STATUS_HEALTHY
        and bool(s.applied_revision)
        and s.applied_revision == s.desired_revision
    )


def progress(
    snap: fleet_pb2.Snapshot, *, clusters: Sequence[str], apps: Sequence[str]
) -> tuple[str, bool]:
    """One line: per cluster how many apps run their revision Synced and Healthy, and the
    first thing still on its way or wrong."""
    cells = {(s.cluster, s.app): s for s in snap.statuses}
    connected = {
        c.name for c in snap.clusters if c.connectivity == types_pb2.CONNECTIVITY_CONNECTED
    }
    parts, waiting = [], ""
    total = 0
    for c in clusters:
        n = sum(1 for a in apps if (c, a) in cells and ready(cells[(c, a)]))
        total += n
        parts.append(f"{c} {n}/{len(apps)}" + ("" if c in connected else " (agent not connected)"))
        for a in apps:
            s = cells.get((c, a))
            if not waiting and s is not None and not ready(s) and s.reason:
                waiting = f"{c}/{a}: {s.reason}"
    line = f"ready {total}/{len(clusters) * len(apps)}: " + ", ".join(parts)
    return line + (f"  [{waiting[:80]}]" if waiting else ""), total == len(clusters) * len(apps)


def _word(enum: object, value: int, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return "".join(w.title() for w in name.removeprefix(prefix).split("_"))


def describe(snap: fleet_pb2.Snapshot) -> str:
    rows = sorted(snap.statuses, key=lambda s: (s.cluster, s.app))
    return "\n".join(
        f"  {s.cluster:<8} {s.app:<10} {s.applied_revision[:8] or '-':<9} "
        f"{_word(types_pb2.SyncStatus, s.sync, 'SYNC_STATUS_'):<11} "
        f"{_word(types_pb2.HealthStatus, s.health, 'HEALTH_STATUS_'):<11} {s.reason}"
        for s in rows
    )


def settled(rollouts: Sequence[fleet_pb2.Rollout], revision: str = "") -> bool:
    """Every app's rollout has gone through every step (of `revision`, when given)."""
    return bool(rollouts) and all(
        r.revision and r.phase == SUCCEEDED and (not revision or r.revision == revision)
        for r in rollouts
    )


def failure(rollouts: Sequence[fleet_pb2.Rollout], revision: str) -> str:
    """Why the rollout of `revision` ended without reaching every step ('' when none did)."""
    for r in rollouts:
        if r.revision == revision and r.phase in ENDED_BADLY:
            return f"{r.app}: the rollout of {revision[:8]} {r.phase.lower()}: {r.reason}"
    return ""


def _step_word(clusters: Sequence[fleet_pb2.RolloutCluster], *, bake: float) -> str:
    """One step's clusters (of every app) in a word or two: `Baking (15s left)`, `Passed`,
    or a count per phase when they differ (`Passed 2, Baking 1`)."""
    if not clusters:
        return "no cluster yet"
    counts: dict[str, int] = {}
    for c in clusters:
        counts[c.phase] = counts.get(c.phase, 0) + 1
    if len(counts) == 1:
        word = next(iter(counts))
    else:
        word = ", ".join(f"{phase} {n}" for phase, n in sorted(counts.items()))
    baking = [c.bake_left_seconds for c in clusters if c.phase == "Baking"]
    if baking and max(baking) > 0:
        left = min(BAKE_STEP * math.ceil(max(baking) / BAKE_STEP), math.ceil(bake))
        word += f" ({left}s left)"
    return word


def line(rollouts: Sequence[fleet_pb2.Rollout]) -> str:
    """`rollout 1a2b3c4d of 3 apps Running: dev Passed -> staging Baking (15s left) -> prod
    Waiting`; the steps are the first app's (the demo gives every app the same ones)."""
    started = [r for r in rollouts if r.revision]
    if not started:
        return "rollout: not started yet"
    newest = max(started, key=lambda r: r.started_at.ToNanoseconds())
    same = [r for r in started if r.revision == newest.revision]
    phases = sorted({r.phase for r in same})
    parts = []
    for step in newest.steps:
        members = [c for r in same for c in r.clusters if c.step == step.name]
        parts.append(f"{step.name} {_step_word(members, bake=step.bake_seconds)}")
    apps = f"{len(same)} app" + ("s" if len(same) != 1 else "")
    return f"rollout {newest.revision[:8]} of {apps} {'/'.join(phases)}: " + " -> ".join(parts)


def arrivals(
    events: Sequence[types_pb2.Event], *, app: str, revision: str
) -> list[tuple[str, float]]:
    """(cluster, seconds since the epoch) in the order the hub assigned `revision` of `app`
    to each cluster, each cluster's first assignment only."""
    seen: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e.at.ToNanoseconds()):
        if e.kind == "assigned" and e.app == app and e.revision == revision:
            seen.setdefault(e.cluster, e.at.ToNanoseconds() / 1e9)
    return sorted(seen.items(), key=lambda kv: kv[1])


def arrival_line(order: Sequence[tuple[str, float]]) -> str:
    """`dev +0.0s, staging +24.1s, prod +49.3s` (seconds after the first cluster got it)."""
    if not order:
        return "no cluster was given it"
    first = order[0][1]
    return ", ".join(f"{cluster} +{at - first:.1f}s" for cluster, at in order)
