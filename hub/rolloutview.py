"""Rollouts as the fleet API shows them: an app's newest rollout as a `fleet_pb2.Rollout`
(steps, clusters, gate readings with their thresholds, bake time left) and the rollout gate of
one matrix cell. Pure reading of hub.rollouts' books; never changes one.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetops.hub import config, events, rollout, rolloutbook, rolloutspec
from fleetops.proto.v1 import fleet_pb2, types_pb2

GATE = {
    rollout.WAITING: types_pb2.ROLLOUT_GATE_WAITING,
    rollout.PROGRESSING: types_pb2.ROLLOUT_GATE_PROGRESSING,
    rollout.BAKING: types_pb2.ROLLOUT_GATE_BAKING,
    rollout.PASSED: types_pb2.ROLLOUT_GATE_DONE,
    rollout.FAILED: types_pb2.ROLLOUT_GATE_FAILED,
    rollout.DEFERRED: types_pb2.ROLLOUT_GATE_DEFERRED,
}


def cell_gate(
    book: rolloutbook.Book | None, *, cluster: str, now: float
) -> tuple[types_pb2.RolloutGate.ValueType, str]:
    """Where (cluster, app) stands in the app's newest rollout, and why in a few words."""
    state = book.state if book is not None else None
    if state is None:
        return types_pb2.ROLLOUT_GATE_UNSPECIFIED, ""
    c = state.clusters.get(cluster)
    if c is None or c.phase == rollout.EXCLUDED:
        return types_pb2.ROLLOUT_GATE_UNSPECIFIED, ""
    if state.phase == rollout.HALTED and c.phase not in (rollout.PASSED, rollout.FAILED):
        return types_pb2.ROLLOUT_GATE_HALTED, state.reason
    if state.phase in (rollout.SUPERSEDED, rollout.ABORTED, rollout.FAILED_ROLLOUT):
        return types_pb2.ROLLOUT_GATE_UNSPECIFIED, ""
    return GATE.get(c.phase, types_pb2.ROLLOUT_GATE_UNSPECIFIED), c.reason


def rollout_pb(
    app: config.App,
    book: rolloutbook.Book | None,
    *,
    gates: Mapping[str, rolloutspec.Gate],
    now: float,
) -> fleet_pb2.Rollout:
    out = fleet_pb2.Rollout(app=app.name)
    policy = app.rollout
    if book is None or policy is None:
        return out
    out.rejected.update(book.rejected)
    out.stable_revision = book.stable
    state = book.state
    if state is None:
        return out
    out.revision, out.phase, out.reason, out.step = (
        state.revision,
        state.phase,
        state.reason,
        state.step,
    )
    out.started_at.CopyFrom(events.timestamp(state.started_at))
    out.updated_at.CopyFrom(events.timestamp(state.updated_at))
    for i, step in enumerate(policy.steps):
        members = [c for c in state.clusters.values() if c.step == i]
        if state.step > i:
            phase = "Passed"
        elif state.step == i and state.phase not in (rollout.SUPERSEDED,):
            phase = "Failed" if state.failures(i) > policy.max_failures else "Running"
        else:
            phase = "Waiting"
        out.steps.append(
            fleet_pb2.RolloutStep(
                name=step.name,
                phase=phase,
                max_parallel=step.parallel(len(members)),
                bake_seconds=step.bake,
                gates=list(step.gates),
                clusters=len(members),
                passed=sum(1 for c in members if c.phase == rollout.PASSED),
                failed=sum(1 for c in members if c.phase == rollout.FAILED),
                deferred=sum(1 for c in members if c.phase == rollout.DEFERRED),
                promoted=i in state.promoted,
            )
        )
    for name in sorted(state.clusters, key=lambda n: (state.clusters[n].step, n)):
        c = state.clusters[name]
        gate, _ = cell_gate(book, cluster=name, now=now)
        row = fleet_pb2.RolloutCluster(
            cluster=name,
            step=policy.steps[c.step].name if 0 <= c.step < len(policy.steps) else "",
            gate=gate,
            phase=c.phase,
            reason=c.reason,
            bake_left_seconds=rollout.left(state, policy, name, now),
            previous_revision=c.previous,
        )
        step_gates = policy.steps[c.step].gates if 0 <= c.step < len(policy.steps) else ()
        for g in step_gates:
            spec = gates.get(g)
            got = c.gates.get(g)
            reading = fleet_pb2.RolloutGateReading(name=g, kind=spec.kind if spec else "")
            if spec is not None and spec.prometheus is not None:
                reading.threshold = str(spec.prometheus.threshold)
                reading.failure_limit = spec.prometheus.failure_limit
            elif spec is not None and spec.webhook is not None:
                reading.threshold = "2xx"
                reading.failure_limit = spec.webhook.failure_limit
            if got is not None:
                reading.verdict, reading.message, reading.failures = (
                    got.verdict,
                    got.message,
                    got.failures,
                )
                if got.value is not None:
                    reading.value, reading.has_value = got.value, True
                if got.at:
                    reading.measured_at.CopyFrom(events.timestamp(got.at))
            row.gates.append(reading)
        out.clusters.append(row)
    return out
