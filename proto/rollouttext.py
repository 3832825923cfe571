"""How a rollout reads in words, for everything that shows one: the hub's `rollout status`
and the TUI's rollout screen say a step, a cluster's phase and a gate's reading the same way.
Pure text from fleet_pb2.Rollout messages; no terminal styling (callers add that)."""

from __future__ import annotations

import math

from fleetops.proto.v1 import fleet_pb2


def span(seconds: float) -> str:
    """A duration the way hub.yaml writes them: 45s, 4m12s, 1h05m (`forever` when unbounded)."""
    if not math.isfinite(seconds):
        return "forever"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def where(r: fleet_pb2.Rollout) -> str:
    """`Running, step 2/3 prod-eu`, or `Succeeded, all 3 steps passed`, or the phase alone
    (an app without steps). Only for a rollout that has a revision."""
    if r.steps and 0 <= r.step < len(r.steps):
        return f"{r.phase}, step {r.step + 1}/{len(r.steps)} {r.steps[r.step].name}"
    if r.steps:
        return f"{r.phase}, all {len(r.steps)} steps passed"
    return r.phase


def cluster_state(c: fleet_pb2.RolloutCluster, *, unknown: str = "-") -> str:
    """`Baking 4m12s left`, else the phase as the hub names it (`unknown` when it sent none)."""
    if c.phase == "Baking" and c.bake_left_seconds > 0:
        return f"Baking {span(c.bake_left_seconds)} left"
    return c.phase or unknown


def gate_reading(g: fleet_pb2.RolloutGateReading) -> str:
    """`error-rate 0.003 (< 0.01) pass`; the gate's own message when it did not pass."""
    out = g.name
    if g.has_value:
        out += f" {g.value:.4g}"
    if g.threshold:
        out += f" ({g.threshold})"
    out += f" {g.verdict}" if g.verdict else " not measured yet"
    if g.failures and g.failure_limit:
        out += f" {g.failures}/{g.failure_limit} failures"
    if g.verdict and g.verdict != "pass" and g.message:
        out += f": {g.message}"
    return out
