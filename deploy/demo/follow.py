"""The demo's rollouts in words: one line saying where every step of the sample apps' rollout
stands, whether a revision has gone through every step, and the order in which the clusters
were given it (the hub's history).

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
