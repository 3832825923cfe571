"""The rollout state machine of one (app, revision R), pure: which clusters may take R now,
when a cluster has passed, when a step has passed, and when the rollout has failed.

No I/O, no awaits, no clock: the shell (hub.rollouts) hands in the facts (each cluster's
step, connectivity, assignment and latest report), the gate readings it took and `now`, and
stores the `State` this returns as JSON, so a hub restarted mid-bake resumes with the clock.

The rules, in the words of the README:
- a step starts when the previous one passed; at most `parallel` of its clusters are in
  flight (Progressing or Baking) at once;
- a report counts only when it answers the assignment that brought R (its generation is at
  least that one's): reports older than the assignment never count;
- the bake clock starts when the cluster reports R applied and Healthy, and starts again on
  any unhealthy report; gates are measured while it bakes;
- a cluster that is not Healthy on R `progress_deadline` after it was given R fails, and so
  does one a gate fails; more than `max_failures` failed clusters fail the step and the
  rollout;
- an offline cluster is Deferred: the step goes on without it and it catches up when it
  returns; a step whose clusters are all offline waits (nothing proved R there) until one
  returns or an operator promotes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from fleetops.hub import rolloutspec
from fleetops.proto import rollouttext

# a cluster's phase in the rollout
WAITING = "Waiting"  # its step has not started, or it waits for a free slot
PROGRESSING = "Progressing"  # given R, not yet Healthy on it
BAKING = "Baking"  # Healthy on R; the bake clock runs and gates are measured
PASSED = "Passed"
FAILED = "Failed"
DEFERRED = "Deferred"  # offline: not waited for, catches up when it returns
EXCLUDED = "Excluded"  # no step matches it and the rollout says unmatched: exclude
IN_FLIGHT = (PROGRESSING, BAKING)

# the rollout's phase
RUNNING = "Running"
PAUSED = "Paused"
SUCCEEDED = "Succeeded"
FAILED_ROLLOUT = "Failed"  # failed and reverted (onFailure: revert)
HALTED = "Halted"  # failed and frozen where it is (onFailure: halt)
ABORTED = "Aborted"  # an operator aborted it: reverted
SUPERSEDED = "Superseded"  # a newer commit started its own rollout
ACTIVE = (RUNNING, PAUSED)

_T = TypeVar("_T")
ERROR_LIMIT = 4  # gate readings in a row that could not be taken before the cluster fails
RELAPSE_LIMIT = 3  # times a baking cluster may lose its health before it fails (flapping)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the hub knows of one cluster the app targets, now."""

    step: int  # index of its step; -1: excluded
    online: bool  # connected, or not offline for long enough to count as offline
    assigned: str = ""  # the revision assigned to it now
    generation: int = 0  # that assignment's generation
    applied: str = ""  # the revision its latest report says it applied
    report_generation: int = 0  # the assignment generation that report answers
    healthy: bool = False  # the report says R is in (applied in full) and Healthy
    status: str = ""  # the report's sync/health and reason in one line, for messages
    fresh: bool = True  # the report came since the hub started (a stored one proves nothing new)


@dataclasses.dataclass(frozen=True)
class Reading:
    """One gate measurement for one cluster (hub.gates takes them)."""

    verdict: str  # pass | fail | nodata | error
    value: float | None
    message: str
    at: float


@dataclasses.dataclass
class GateState:
    verdict: str = ""  # the latest reading's verdict ('' none yet)
    value: float | None = None
    message: str = ""
    at: float = 0.0  # when the latest reading was taken
    failures: int = 0  # failing readings in a row
    errors: int = 0  # readings in a row that could not be taken


@dataclasses.dataclass
class ClusterState:
    step: int
    phase: str = WAITING
    previous: str = ""  # what it ran before the rollout gave it R
    generation: int = 0  # the assignment generation that brought it R (0: not yet)
    since: float = 0.0  # Progressing: when its deadline clock started
    healthy_since: float = 0.0  # Baking: when its bake clock started
    reason: str = ""
    gates: dict[str, GateState] = dataclasses.field(default_factory=dict)
    took: bool = False  # it was given R (a revert sends it back)
    relapses: int = 0  # times it lost its health while baking


@dataclasses.dataclass
class State:
    app: str
    revision: str
    phase: str = RUNNING
    step: int = 0  # the step running now (len(steps) once every step passed)
    started_at: float = 0.0
    updated_at: float = 0.0
    reason: str = ""
    clusters: dict[str, ClusterState] = dataclasses.field(default_factory=dict)
    promoted: list[int] = dataclasses.field(default_factory=list)  # steps an operator promoted
    steps: list[str] = dataclasses.field(default_factory=list)  # the policy's step names it runs
    frozen_at: float = 0.0  # the app is paused (or auto-sync off): clocks stand still since

    def admitted(self) -> frozenset[str]:
        """The clusters that should run R now: once it succeeded, every one it did not
        exclude (those that were offline catch up)."""
        if self.phase in (FAILED_ROLLOUT, ABORTED):
            return frozenset()
        if self.phase == SUCCEEDED:
            return frozenset(n for n, c in self.clusters.items() if c.phase != EXCLUDED)
        return frozenset(n for n, c in self.clusters.items() if c.took)

    def failures(self, step: int) -> int:
        return sum(1 for c in self.clusters.values() if c.step == step and c.phase == FAILED)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> State:
        """The state `to_json` saved; fields this hub does not know (a newer one wrote them)
        are left out."""
        clusters = {
            name: _known(
                ClusterState,
                {**c, "gates": {g: _known(GateState, v) for g, v in c.get("gates", {}).items()}},
            )
            for name, c in doc.get("clusters", {}).items()
        }
        return _known(cls, {**doc, "clusters": clusters, "promoted": list(doc.get("promoted", []))})


def _known(kind: type[_T], doc: Mapping[str, Any]) -> _T:
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    return kind(**{k: v for k, v in doc.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Note:
    """Something worth a history entry: the rollout's own words, and the cluster it is about
    ('' for the rollout as a whole)."""

    message: str
    cluster: str = ""


def start(
    *, app: str, revision: str, facts: Mapping[str, Facts], now: float
) -> tuple[State, list[Note]]:
    """A rollout of `revision`: every cluster waits in its step."""
    state = State(app=app, revision=revision, started_at=now, updated_at=now)
    for name, f in facts.items():
        state.clusters[name] = _fresh(f, revision, now)
    return state, [Note(f"rollout of {revision[:8]} started")]


def _fresh(f: Facts, revision: str, now: float) -> ClusterState:
    c = ClusterState(step=f.step, previous=f.assigned if f.assigned != revision else "")
    if f.step < 0:
        c.phase, c.reason = EXCLUDED, "no step matches it (unmatched: exclude)"
    elif f.assigned == revision:  # it runs R already (a restart, a pin lifted): keep it
        c.took, c.generation, c.phase, c.since = True, f.generation, PROGRESSING, now
    return c


def due(
    state: State, policy: rolloutspec.Rollout, gates: Mapping[str, rolloutspec.Gate], now: float
) -> list[tuple[str, str]]:
    """(cluster, gate) readings to take now: Prometheus gates every interval while a cluster
    bakes, webhooks once its bake time is over (again after their interval when one failed)."""
    if state.phase not in ACTIVE:
        return []
    out: list[tuple[str, str]] = []
    for name, c in sorted(state.clusters.items()):
        if c.phase != BAKING or not 0 <= c.step < len(policy.steps) or c.step in state.promoted:
            continue
        step = policy.steps[c.step]
        baked = now - c.healthy_since >= step.bake
        for g in dict.fromkeys(step.gates):
            gate, got = gates.get(g), c.gates.get(g)
            if gate is None or gate.manual:
                continue
            if gate.prometheus is not None:
                every = gate.prometheus.interval
            elif gate.webhook is not None:
                if not baked or (got is not None and got.verdict == "pass"):
                    continue
                every = gate.webhook.interval
            else:
                continue
            if got is None or not got.at or now - got.at >= every:
                out.append((name, g))
    return out


def record(state: State, *, cluster: str, gate: rolloutspec.Gate, reading: Reading) -> None:
    """Take a reading for a cluster still baking (late ones, after a reset, are dropped)."""
    c = state.clusters.get(cluster)
    if c is None or c.phase != BAKING or not reading.at >= c.healthy_since:  # NaN: dropped
        return
    g = c.gates.setdefault(gate.name, GateState())
    if reading.at < g.at:  # it arrived after a newer one
        return
    verdict = reading.verdict
    if verdict == "nodata" and gate.prometheus is not None and gate.prometheus.no_data != "wait":
        verdict = gate.prometheus.no_data  # fail | pass, as configured
    g.verdict, g.value, g.message, g.at = verdict, reading.value, reading.message, reading.at
    if verdict == "fail":
        g.failures, g.errors = g.failures + 1, 0
    elif verdict == "error":
        g.errors += 1
    elif verdict == "pass":
        g.failures, g.errors = 0, 0
    else:  # nodata, waiting: neither passes nor fails
        g.errors = 0


def advance(
    state: State,
    *,
    policy: rolloutspec.Rollout,
    gates: Mapping[str, rolloutspec.Gate],
    facts: Mapping[str, Facts],
    now: float,
) -> list[Note]:
    """Move the rollout on as far as the facts allow; returns what is worth recording."""
    notes: list[Note] = []
    if state.phase not in ACTIVE:
        return notes
    state.step = max(0, state.step)
    _remap(state, policy)
    facts = _membership(state, facts, now=now, steps=len(policy.steps))
    for name in sorted(state.clusters):
        c = state.clusters[name]
        f = facts.get(name)
        if f is not None:
            notes += _cluster(state, name, c, f, policy=policy, gates=gates, now=now)
    for step in sorted({c.step for c in state.clusters.values() if c.phase == FAILED}):
        if state.failures(step) > policy.max_failures or _all_failed(state, step):
            state.phase = FAILED_ROLLOUT if policy.on_failure == "revert" else HALTED
            failed = [
                n for n, c in sorted(state.clusters.items()) if c.phase == FAILED and c.step == step
            ]
            state.reason = (
                f"step {_name(policy, step)} failed: {len(failed)} cluster"
                f"{'s' if len(failed) > 1 else ''} failed (maxFailures {policy.max_failures}); "
                f"{failed[0]}: {state.clusters[failed[0]].reason}"
            )
            verb = "reverting" if state.phase == FAILED_ROLLOUT else "halted where it is"
            notes.append(Note(f"rollout of {state.revision[:8]} {verb}: {state.reason}"))
            state.updated_at = now
            return notes
    if state.phase == RUNNING:
        notes += _steps(state, policy=policy, facts=facts, now=now)
    state.updated_at = now
    return notes


def _all_failed(state: State, step: int) -> bool:
    """Every cluster of the step that could prove R failed (none passed, none in flight or
    waiting): the step can never pass, whatever maxFailures allows."""
    phases = [c.phase for c in state.clusters.values() if c.step == step]
    return FAILED in phases and all(p in (FAILED, DEFERRED, EXCLUDED) for p in phases)


def _remap(state: State, policy: rolloutspec.Rollout) -> None:
    """hub.yaml's steps changed under a running rollout: the step running now, and promoted
    steps, follow their names; clusters follow their facts (hub.rollouts gives the new step).
    A removed running step hands over to the first later step that is still there."""
    names = [s.name for s in policy.steps]
    old = state.steps
    if old and old != names:
        later = old[state.step :] if state.step < len(old) else []
        state.step = next((names.index(n) for n in later if n in names), len(names))
        state.promoted = sorted(
            names.index(old[i]) for i in state.promoted if 0 <= i < len(old) and old[i] in names
        )
        for c in state.clusters.values():  # by name; a step that is gone: its facts decide
            was = old[c.step] if 0 <= c.step < len(old) else ""
            c.step = names.index(was) if was in names else (len(names) if c.took else c.step)
    state.steps = names


def freeze(state: State, now: float) -> None:
    """The app is paused, its auto-sync is off or its fleet.yaml does not read: nobody can be
    given R now, so no clock may run out (see `thaw`)."""
    if state.phase in ACTIVE and not state.frozen_at:
        state.frozen_at = now


def thaw(state: State, now: float) -> None:
    """Clocks go on where they stood when the rollout froze."""
    if not state.frozen_at:
        return
    stood = max(0.0, now - state.frozen_at)
    for c in state.clusters.values():
        if c.phase == PROGRESSING:
            c.since += stood
        elif c.phase == BAKING:
            c.healthy_since += stood
    state.frozen_at = 0.0


def _name(policy: rolloutspec.Rollout, step: int) -> str:
    return policy.steps[step].name if 0 <= step < len(policy.steps) else str(step + 1)


def _membership(
    state: State, given: Mapping[str, Facts], *, now: float, steps: int
) -> dict[str, Facts]:
    """Clusters that joined the app meanwhile wait in their step; those gone are forgotten.
    Returns the facts with steps the policy has: past the last goes with the last (the policy
    lost steps), below zero is excluded."""
    placed = {n: min(max(f.step, -1), steps - 1) for n, f in given.items()}
    facts = {n: dataclasses.replace(f, step=placed[n]) for n, f in given.items()}
    for name in [n for n in state.clusters if n not in facts]:
        del state.clusters[name]
    for name, f in facts.items():
        c = state.clusters.get(name)
        if c is None:
            state.clusters[name] = _fresh(f, state.revision, now)
        elif c.step != f.step and not c.took:  # its labels moved it to another step
            state.clusters[name] = _fresh(f, state.revision, now)
        elif c.took and f.step >= 0 and not 0 <= c.step < steps:  # its step is gone
            c.step = f.step
    return facts


def _cluster(
    state: State,
    name: str,
    c: ClusterState,
    f: Facts,
    *,
    policy: rolloutspec.Rollout,
    gates: Mapping[str, rolloutspec.Gate],
    now: float,
) -> list[Note]:
    if c.phase in (PASSED, FAILED, EXCLUDED):
        return []
    if not f.online:
        if c.phase != DEFERRED:
            c.phase, c.reason = DEFERRED, "the agent is offline; it catches up when it returns"
            return [Note(f"{name} is offline: deferred, the rollout goes on without it", name)]
        return []
    if c.phase == DEFERRED:  # back: waits for its turn again, or goes on with R
        c.phase, c.reason, c.healthy_since = (PROGRESSING if c.took else WAITING), "", 0.0
        c.since = now
    if not c.took:
        return []
    if f.assigned == state.revision and f.generation and not c.generation:
        c.generation = f.generation  # the assignment that brought R reached the store
    answered = (
        c.generation > 0 and f.report_generation >= c.generation and f.applied == state.revision
    )
    if c.phase == PROGRESSING and answered and f.healthy and f.fresh:  # bake starts (or passes)
        c.phase, c.healthy_since, c.reason, c.gates = BAKING, now, "", {}
    elif c.phase == PROGRESSING:
        if now - c.since > policy.progress_deadline:
            c.phase = FAILED
            seen = f.status or "no report since it was given it"
            c.reason = (
                f"not Healthy on {state.revision[:8]} within the progress deadline "
                f"({rollouttext.span(policy.progress_deadline)}): {seen}"
            )
            return [Note(f"{name} failed: {c.reason}", name)]
        else:
            c.reason = f.status if answered else "waiting for the agent to apply it"
        return []
    # Baking
    if not f.fresh:  # the hub restarted: the clock stands, nothing passes on an old report
        c.reason = "waiting for the agent to report again since the hub started"
        return []
    if not (answered and f.healthy):
        seen = f.status or ("Unhealthy" if answered else "an older report")
        c.relapses += 1
        if c.relapses > RELAPSE_LIMIT:
            c.phase = FAILED
            c.reason = f"lost its health {c.relapses} times while baking (flapping): {seen}"
            return [Note(f"{name} failed: {c.reason}", name)]
        c.phase, c.since, c.healthy_since, c.gates = PROGRESSING, now, 0.0, {}
        c.reason = f"not Healthy any more ({seen}); the bake starts again when it is"
        return [Note(f"{name}: {c.reason}", name)]
    step = policy.steps[c.step] if 0 <= c.step < len(policy.steps) else None
    if step is None:
        c.phase = PASSED
        return []
    if c.step in state.promoted:
        c.phase, c.reason = PASSED, "promoted by an operator"
        return [Note(f"{name} passed step {step.name} (promoted)", name)]
    waiting: list[str] = []
    for g in dict.fromkeys(step.gates):
        gate, got = gates.get(g), c.gates.get(g)
        spec = None if gate is None else gate.prometheus or gate.webhook
        if spec is None:  # manual (or not configured): only a promote passes it
            how = f"waits for `fleetops-hub rollout promote {state.app}`"
            waiting.append(f"gate {g} {how if gate else 'is not configured'}")
            continue
        limit = max(1, spec.failure_limit)
        if got is not None and got.failures >= limit:
            c.phase, c.reason = FAILED, f"gate {g} failed: {got.message}"
            return [Note(f"{name} failed step {step.name}: {c.reason}", name)]
        if got is not None and got.errors >= ERROR_LIMIT:
            c.phase = FAILED
            c.reason = f"gate {g} could not be measured {got.errors} times: {got.message}"
            return [Note(f"{name} failed step {step.name}: {c.reason}", name)]
        if got is None or got.verdict != "pass":
            waiting.append(got.message if got is not None and got.message else f"measuring {g}")
    if step.bake - (now - c.healthy_since) > 0:  # the view shows the time left (`left`)
        c.reason = "baking" + (f"; {waiting[0]}" if waiting else "")
        return []
    if waiting:
        c.reason = f"baked; waiting: {'; '.join(waiting)}"
        return []
    c.phase, c.reason = PASSED, ""
    return [Note(f"{name} passed step {step.name}", name)]


def _steps(
    state: State, *, policy: rolloutspec.Rollout, facts: Mapping[str, Facts], now: float
) -> list[Note]:
    notes: list[Note] = []
    while True:
        # late comers (joined, or back from offline) of steps that passed catch up at once
        for n, c in sorted(state.clusters.items()):
            if c.step < state.step and c.phase == WAITING:
                notes += _admit(state, n, c, facts[n], now)
        if state.step >= len(policy.steps):
            break
        step = policy.steps[state.step]
        members = {n: c for n, c in state.clusters.items() if c.step == state.step}
        promoted = state.step in state.promoted
        flying = sum(1 for c in members.values() if c.phase in IN_FLIGHT)
        room = len(members) if promoted else max(1, step.parallel(len(members))) - flying
        for n in sorted(members):
            c = members[n]
            if room <= 0:
                break
            if c.phase == WAITING:
                notes += _admit(state, n, c, facts[n], now)
                room -= 1
        phases = [c.phase for c in members.values()]
        if any(p in (WAITING, *IN_FLIGHT) for p in phases):
            return notes
        proved = any(c.phase == PASSED for c in state.clusters.values())
        if not members and not promoted and not proved:
            state.reason = (
                f"step {step.name} matches no cluster, and no earlier step proved "
                f"{state.revision[:8]} anywhere; it goes on when a cluster of it registers (or "
                f"`fleetops-hub rollout promote {state.app}` goes on without one)"
            )
            return notes
        if members and PASSED not in phases and FAILED not in phases and not promoted:
            state.reason = (
                f"step {step.name}: every cluster is offline; it goes on when one returns "
                f"(or `fleetops-hub rollout promote {state.app}` goes on without them)"
            )
            return notes
        deferred = sorted(n for n, c in members.items() if c.phase == DEFERRED)
        said = f" ({len(deferred)} deferred: {', '.join(deferred[:5])})" if deferred else ""
        notes.append(Note(f"step {step.name} passed{said}"))
        state.step += 1
        state.reason = ""
    if all(c.phase in (PASSED, EXCLUDED, FAILED, DEFERRED) for c in state.clusters.values()):
        state.phase = SUCCEEDED
        notes.append(Note(f"rollout of {state.revision[:8]} succeeded: every step passed"))
    return notes


def _admit(state: State, name: str, c: ClusterState, f: Facts, now: float) -> list[Note]:
    c.took, c.phase, c.since, c.reason = True, PROGRESSING, now, "given the revision"
    c.generation = f.generation if f.assigned == state.revision else 0
    if f.assigned and f.assigned != state.revision:  # what it runs just before R
        c.previous = f.assigned
    return [Note(f"{state.revision[:8]} given to {name}", name)]


def catch_up(state: State, *, facts: Mapping[str, Facts]) -> list[Note]:
    """After the rollout succeeded, clusters that were offline (or joined late) take R
    (`admitted` gives it to them): Progressing while they apply it, Passed once they report
    it in and Healthy, Deferred again while offline."""
    notes: list[Note] = []
    if state.phase != SUCCEEDED:
        return notes
    for name, c in sorted(state.clusters.items()):
        f = facts.get(name)
        if f is None or c.phase not in (DEFERRED, PROGRESSING, WAITING, BAKING):
            continue
        if not f.online:
            c.phase, c.reason = DEFERRED, "the agent is offline; it catches up when it returns"
            continue
        proved = f.assigned == state.revision == f.applied and f.healthy and f.fresh
        if proved and f.report_generation >= f.generation:
            c.phase, c.reason, c.took = PASSED, "caught up after the rollout", True
            notes.append(Note(f"{name} caught up on {state.revision[:8]}", name))
        else:
            c.phase = PROGRESSING
            c.reason = f"catching up: {f.status or 'waiting for the agent to apply it'}"
    return notes


def pending(state: State) -> bool:
    """A succeeded rollout still has clusters catching up."""
    return state.phase == SUCCEEDED and any(
        c.phase in (DEFERRED, PROGRESSING, WAITING, BAKING) for c in state.clusters.values()
    )


def wake_at(state: State, policy: rolloutspec.Rollout) -> float:
    """When a clock of this rollout runs out next (a bake ends, a deadline passes), so the
    shell looks again right then; infinity when no clock runs."""
    out = math.inf
    if state.phase not in ACTIVE or state.frozen_at:
        return out
    for c in state.clusters.values():
        if c.phase == BAKING and 0 <= c.step < len(policy.steps):
            out = min(out, c.healthy_since + policy.steps[c.step].bake)
        elif c.phase == PROGRESSING:
            out = min(out, c.since + policy.progress_deadline)
    return out


def promote(state: State) -> str:
    """An operator says the step running now passed its bake and gates: what it did."""
    if state.phase not in ACTIVE or state.step in state.promoted:
        return ""
    if state.steps and state.step >= len(state.steps):
        return ""  # every step passed already
    state.promoted.append(state.step)
    return f"step {state.step + 1} promoted"


def revert_targets(
    state: State, *, last_good: Mapping[str, str], rejected: Collection[str] = ()
) -> tuple[dict[str, str], list[str]]:
    """Where each cluster that took R goes back to: what it ran just before R unless that was
    rejected too, else its own last good revision (the last that passed its step there); and
    the clusters that had nothing before (they stay, said so)."""
    back: dict[str, str] = {}
    stuck: list[str] = []
    for name, c in sorted(state.clusters.items()):
        if not c.took:
            continue
        bad = {state.revision, *rejected}
        targets = [t for t in (c.previous, last_good.get(name)) if t and t not in bad]
        if targets:
            back[name] = targets[0]
        else:
            stuck.append(name)
    return back, stuck


def left(state: State, policy: rolloutspec.Rollout, name: str, now: float) -> float:
    """Seconds of bake left for a baking cluster (0 when done or not baking)."""
    c = state.clusters.get(name)
    if c is None or c.phase != BAKING or not 0 <= c.step < len(policy.steps):
        return 0.0
    return max(0.0, policy.steps[c.step].bake - (now - c.healthy_since))
