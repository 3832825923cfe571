"""The rollout state machine (hub.rollout) on its own: no server, no store, no clock. A small
shell (`Shell`, below) plays the hub around it: it hands in each cluster's facts, assigns R to
the clusters the state admits (a new assignment generation, as the planner does), and lets the
tests make agents report, go offline and come back, at a `now` the test chooses."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from fleetops.hub import rollout, rolloutspec
from fleetops.hub.rollout import Facts, Reading

R = "f00dfeed" + "0" * 32  # the revision rolling out
OLD = "01d01d01" + "0" * 32  # what every cluster ran before
T0 = 1_800_000_000.0
MIN = 60.0

ERROR_RATE = rolloutspec.Gate(
    "error-rate",
    prometheus=rolloutspec.Prometheus(
        url="http://prometheus.test:9090",
        query='errors{cluster="{{cluster}}"}',
        threshold=rolloutspec.Threshold("<", 0.01),
        interval=30.0,
        failure_limit=2,
        no_data="wait",
    ),
)
SMOKE = rolloutspec.Gate("smoke", webhook=rolloutspec.Webhook(url="https://ci.test/smoke"))
APPROVE = rolloutspec.Gate("approve", manual=True)
GATES = {g.name: g for g in (ERROR_RATE, SMOKE, APPROVE)}


def step(
    name: str,
    *,
    parallel: int = 0,
    percent: int = 100,
    bake: float = 0.0,
    gates: tuple[str, ...] = (),
) -> rolloutspec.Step:
    return rolloutspec.Step(
        name=name,
        cluster_names=(name,),
        max_parallel=parallel,
        max_parallel_percent=percent,
        bake=bake,
        gates=gates,
    )


def policy(*steps: rolloutspec.Step, **kw: object) -> rolloutspec.Rollout:
    return rolloutspec.Rollout(steps=steps, **kw)  # type: ignore[arg-type]


TWO_STEPS = policy(step("canary", parallel=1, bake=10 * MIN), step("prod", percent=50))


def gate_rollout(gate: str, *, bake: float = 10 * MIN, **kw: object) -> rolloutspec.Rollout:
    return policy(step("canary", bake=bake, gates=(gate,)), step("prod"), **kw)


class Shell:
    """Plays the hub around the machine (named so: it is not what these tests are about)."""

    def __init__(
        self,
        pol: rolloutspec.Rollout,
        clusters: dict[str, int],
        *,
        on_r: tuple[str, ...] = (),
        gates: dict[str, rolloutspec.Gate] | None = None,
    ) -> None:
        self.policy, self.gates = pol, GATES if gates is None else gates
        self.facts: dict[str, Facts] = {}
        for name, index in clusters.items():
            rev = R if name in on_r else OLD
            self.facts[name] = Facts(
                step=index,
                online=True,
                assigned=rev,
                generation=3,
                applied=rev,
                report_generation=3,
                healthy=True,
                status="Synced/Healthy",
            )
        self.state, self.notes = rollout.start(app="web", revision=R, facts=self.facts, now=T0)

    def tick(self, now: float) -> list[rollout.Note]:
        """One turn of the shell: advance, then assign R to whoever is admitted."""
        notes = rollout.advance(
            self.state, policy=self.policy, gates=self.gates, facts=self.facts, now=now
        )
        for name in self.state.admitted():
            f = self.facts[name]
            if f.assigned != R:
                self.facts[name] = dataclasses.replace(f, assigned=R, generation=f.generation + 1)
        self.notes += notes
        return notes

    def report(
        self,
        name: str,
        *,
        healthy: bool = True,
        applied: str = R,
        generation: int | None = None,
        status: str = "",
    ) -> None:
        f = self.facts[name]
        self.facts[name] = dataclasses.replace(
            f,
            applied=applied,
            report_generation=f.generation if generation is None else generation,
            healthy=healthy,
            status=status or ("Synced/Healthy" if healthy else "Synced/Progressing"),
        )

    def set(self, name: str, **changes: object) -> None:
        self.facts[name] = dataclasses.replace(self.facts[name], **changes)  # type: ignore[arg-type]

    def join(self, name: str, index: int, *, rev: str = OLD) -> None:
        self.facts[name] = Facts(
            step=index, online=True, assigned=rev, generation=1, applied=rev, report_generation=1
        )

    def phase(self, name: str) -> str:
        return self.state.clusters[name].phase

    def phases(self) -> dict[str, str]:
        return {n: c.phase for n, c in sorted(self.state.clusters.items())}

    def given(self) -> set[str]:
        return set(self.state.admitted())

    def record(
        self, name: str, gate: str, verdict: str, at: float, value: float | None = None
    ) -> None:
        rollout.record(
            self.state,
            cluster=name,
            gate=self.gates[gate],
            reading=Reading(verdict, value, f"{gate}: {verdict} {value}", at),
        )

    def healthy_all(self, names: set[str]) -> None:
        for n in sorted(names):
            self.report(n)


# -- steps and maxParallel


def test_only_the_first_step_is_given_the_revision_at_first() -> None:
    shell = Shell(TWO_STEPS, {"canary": 0, "prod-a": 1, "prod-b": 1})
    shell.tick(T0)
    assert shell.given() == {"canary"}
    assert shell.phases() == {"canary": "Progressing", "prod-a": "Waiting", "prod-b": "Waiting"}
    assert any("given to canary" in n.message for n in shell.notes)


def test_max_parallel_count_caps_clusters_in_flight_and_a_pass_frees_a_slot() -> None:
    pol = policy(step("canary", parallel=2, bake=MIN))
    shell = Shell(pol, {"c1": 0, "c2": 0, "c3": 0, "c4": 0})
    shell.tick(T0)
    assert shell.given() == {"c1", "c2"}
    shell.report("c1")
    shell.tick(T0 + 1)
    assert shell.phase("c1") == "Baking"
    assert shell.given() == {"c1", "c2"}, "Baking still holds a slot"
    shell.tick(T0 + 1 + MIN)
    assert shell.phase("c1") == "Passed"
    assert shell.given() == {"c1", "c2", "c3"}, "the pass freed one slot, only one"


@pytest.mark.parametrize(
    ("size", "percent", "in_flight"), [(5, 25, 2), (4, 25, 1), (3, 1, 1), (3, 100, 3)]
)
def test_max_parallel_percent_rounds_up_and_lets_at_least_one_go(
    size: int, percent: int, in_flight: int
) -> None:
    pol = policy(step("prod", percent=percent))
    shell = Shell(pol, {f"p{i}": 0 for i in range(size)})
    shell.tick(T0)
    assert len(shell.given()) == in_flight


def test_the_next_step_starts_only_when_every_cluster_of_the_previous_passed() -> None:
    pol = policy(step("canary", bake=10 * MIN), step("prod"))
    shell = Shell(pol, {"c1": 0, "c2": 0, "prod-a": 1})
    shell.tick(T0)
    shell.healthy_all({"c1", "c2"})
    shell.tick(T0 + MIN)
    shell.tick(T0 + 11 * MIN)
    assert shell.phases()["c1"] == "Passed" and shell.phase("c2") == "Passed"
    assert "prod-a" in shell.given()
    assert shell.state.step == 1
    assert any(n.message == "step canary passed" for n in shell.notes)


def test_one_cluster_still_baking_holds_the_next_step() -> None:
    pol = policy(step("canary", bake=10 * MIN), step("prod"))
    shell = Shell(pol, {"c1": 0, "c2": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + MIN)
    shell.report("c2")
    shell.tick(T0 + 5 * MIN)
    shell.tick(T0 + 11 * MIN)
    assert shell.phases() == {"c1": "Passed", "c2": "Baking", "prod-a": "Waiting"}
    assert rollout.left(shell.state, pol, "c2", T0 + 11 * MIN) == pytest.approx(4 * MIN)


def test_the_rollout_succeeds_when_every_step_passed() -> None:
    shell = Shell(TWO_STEPS, {"canary": 0, "prod-a": 1, "prod-b": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.tick(T0 + 1 + 10 * MIN)
    assert shell.given() == {"canary", "prod-a"}, "prod: 50% of two clusters"
    shell.report("prod-a")
    shell.tick(T0 + 11 * MIN)
    assert shell.state.phase == "Running"
    shell.report("prod-b")
    shell.tick(T0 + 12 * MIN)
    assert shell.state.phase == "Succeeded"
    assert shell.given() == {"canary", "prod-a", "prod-b"}
    assert shell.notes[-1].message.endswith("succeeded: every step passed")


# -- the bake clock


def test_a_report_older_than_the_assignment_never_starts_the_bake() -> None:
    pol = policy(step("canary", bake=10 * MIN))
    shell = Shell(pol, {"canary": 0})
    shell.tick(T0)
    gen = shell.facts["canary"].generation
    shell.report("canary", generation=gen - 1)  # says R, healthy, but answers the old assignment
    shell.tick(T0 + MIN)
    assert shell.phase("canary") == "Progressing"
    shell.report("canary", applied=OLD)  # answers it but still runs the old revision
    shell.tick(T0 + 2 * MIN)
    assert shell.phase("canary") == "Progressing"
    shell.report("canary")
    shell.tick(T0 + 3 * MIN)
    assert shell.phase("canary") == "Baking"
    assert shell.state.clusters["canary"].healthy_since == T0 + 3 * MIN
    shell.tick(T0 + 12 * MIN)
    assert shell.phase("canary") == "Baking", "the clock started at the answering report"
    shell.tick(T0 + 13 * MIN)
    assert shell.phase("canary") == "Passed"


def test_the_store_learning_the_assignment_late_still_needs_an_answer_to_it() -> None:
    pol = policy(step("canary", bake=MIN))
    shell = Shell(pol, {"canary": 0})
    shell.tick(T0)
    # the assignment reached the store with generation 4; an agent report of generation 3
    # saying R (it cannot, but a lying or confused one might) does not count
    shell.report("canary", generation=3)
    shell.tick(T0 + 1)
    assert shell.phase("canary") == "Progressing"


def test_any_unhealthy_report_restarts_the_bake() -> None:
    pol = policy(step("canary", bake=10 * MIN))
    shell = Shell(pol, {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + MIN)
    shell.report("canary", healthy=False, status="Synced/Degraded: pod crashloops")
    notes = shell.tick(T0 + 8 * MIN)
    assert shell.phase("canary") == "Progressing"
    assert "Degraded: pod crashloops" in notes[0].message
    shell.report("canary")
    shell.tick(T0 + 9 * MIN)
    shell.tick(T0 + 18 * MIN)
    assert shell.phase("canary") == "Baking", "the bake started again at 9m"
    assert rollout.left(shell.state, pol, "canary", T0 + 18 * MIN) == pytest.approx(MIN)
    shell.tick(T0 + 19 * MIN)
    assert shell.phase("canary") == "Passed"


def test_a_step_without_bake_passes_on_the_first_healthy_report() -> None:
    pol = policy(step("canary"), step("prod"))
    shell = Shell(pol, {"canary": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert shell.phase("canary") == "Passed"
    assert "prod-a" in shell.given(), "the next step starts in the same turn"


# -- progress deadline


def test_not_healthy_within_the_progress_deadline_fails_naming_deadline_and_status() -> None:
    pol = policy(step("canary"), step("prod"), progress_deadline=5 * MIN)
    shell = Shell(pol, {"canary": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("canary", healthy=False, status="Synced/Progressing: 0/1 pods available")
    shell.tick(T0 + 5 * MIN)
    assert shell.phase("canary") == "Progressing"
    shell.tick(T0 + 5 * MIN + 1)
    c = shell.state.clusters["canary"]
    assert c.phase == "Failed"
    assert "progress deadline (5m00s)" in c.reason
    assert "0/1 pods available" in c.reason
    assert shell.state.phase == "Failed"
    assert "prod-a" not in shell.given()


def test_no_report_at_all_fails_after_the_deadline_and_says_so() -> None:
    pol = policy(step("canary"), progress_deadline=MIN)
    shell = Shell(pol, {"canary": 0})
    shell.tick(T0)
    shell.set("canary", status="")
    shell.tick(T0 + 2 * MIN)
    assert "no report since it was given it" in shell.state.clusters["canary"].reason


# -- failures


def test_a_failure_beyond_max_failures_reverts_with_step_cluster_and_gate_value() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    for at in (T0 + 30, T0 + 60):
        rollout.record(
            shell.state,
            cluster="canary",
            gate=ERROR_RATE,
            reading=Reading("fail", 0.1, "error-rate = 0.1 (passes when < 0.01)", at),
        )
    notes = shell.tick(T0 + 61)
    assert shell.state.phase == "Failed"
    assert shell.state.reason.startswith("step canary failed: 1 cluster failed (maxFailures 0)")
    assert "canary: gate error-rate failed: error-rate = 0.1 (passes when < 0.01)" in (
        shell.state.reason
    )
    assert notes[-1].message.startswith(f"rollout of {R[:8]} reverting")
    assert shell.given() == set(), "a reverted rollout admits nobody"
    assert shell.tick(T0 + 99) == [], "a finished rollout does not move"


def test_halt_freezes_every_cluster_where_it_is() -> None:
    pol = policy(step("canary"), step("prod"), progress_deadline=MIN, on_failure="halt")
    shell = Shell(pol, {"canary": 0, "prod-a": 1})
    shell.tick(T0)
    notes = shell.tick(T0 + 2 * MIN)
    assert shell.state.phase == "Halted"
    assert "halted where it is" in notes[-1].message
    assert shell.given() == {"canary"}, "halt keeps R where it went"


def test_failures_within_max_failures_let_the_step_pass() -> None:
    pol = policy(step("canary"), step("prod"), progress_deadline=MIN, max_failures=1)
    shell = Shell(pol, {"c1": 0, "c2": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + 2 * MIN)
    assert shell.phases() == {"c1": "Passed", "c2": "Failed", "prod-a": "Progressing"}
    assert shell.state.phase == "Running"


def test_the_failure_reason_names_a_cluster_of_the_step_that_failed() -> None:
    pol = policy(step("canary"), step("prod"), progress_deadline=MIN, max_failures=1)
    shell = Shell(pol, {"a-canary": 0, "a-good": 0, "b1": 1, "b2": 1})
    shell.tick(T0)
    shell.report("a-good")
    shell.tick(T0 + 2 * MIN)  # a-canary failed (tolerated), prod starts
    assert shell.phase("a-canary") == "Failed" and shell.given() >= {"b1", "b2"}
    shell.tick(T0 + 4 * MIN)  # both prod clusters miss the deadline
    assert shell.state.phase == "Failed"
    assert shell.state.reason.startswith("step prod failed: 2 clusters failed (maxFailures 1)")
    assert "; b1: not Healthy" in shell.state.reason


# -- offline clusters


def test_an_offline_cluster_is_deferred_and_does_not_block_its_step() -> None:
    pol = policy(step("canary", bake=MIN), step("prod"))
    shell = Shell(pol, {"c1": 0, "c2": 0, "prod-a": 1})
    shell.set("c2", online=False)
    shell.tick(T0)
    assert shell.phase("c2") == "Deferred"
    assert shell.given() == {"c1"}
    shell.report("c1")
    shell.tick(T0 + 1)
    shell.tick(T0 + 2 * MIN)
    assert shell.phase("c1") == "Passed"
    assert "prod-a" in shell.given()
    assert any(n.message == "step canary passed (1 deferred: c2)" for n in shell.notes)


def test_a_deferred_cluster_back_after_its_step_passed_catches_up_at_once() -> None:
    shell = Shell(policy(step("canary"), step("prod")), {"c1": 0, "c2": 0, "prod-a": 1})
    shell.set("c2", online=False)
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + 1)
    assert shell.state.step == 1
    shell.set("c2", online=True)
    shell.tick(T0 + 2)
    assert shell.phase("c2") == "Progressing" and "c2" in shell.given()


def test_a_deferred_cluster_back_before_its_step_waits_for_its_turn() -> None:
    shell = Shell(policy(step("canary"), step("prod")), {"c1": 0, "prod-a": 1})
    shell.set("prod-a", online=False)
    shell.tick(T0)
    assert shell.phase("prod-a") == "Deferred"
    shell.set("prod-a", online=True)
    shell.tick(T0 + 1)
    assert shell.phase("prod-a") == "Waiting" and "prod-a" not in shell.given()


def test_a_cluster_in_flight_that_goes_offline_frees_its_slot_and_resumes_with_r() -> None:
    pol = policy(step("canary", parallel=1, bake=MIN))
    shell = Shell(pol, {"c1": 0, "c2": 0})
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + 1)
    shell.set("c1", online=False)
    shell.tick(T0 + 2)
    assert shell.phases() == {"c1": "Deferred", "c2": "Progressing"}
    shell.set("c1", online=True)
    shell.tick(T0 + 3)
    assert shell.phase("c1") == "Baking", "its report still answers R: the bake starts anew"
    assert shell.state.clusters["c1"].healthy_since == T0 + 3


def test_a_step_whose_clusters_are_all_offline_waits_says_so_and_promote_lets_it_go() -> None:
    shell = Shell(policy(step("canary"), step("prod")), {"c1": 0, "prod-a": 1})
    shell.set("c1", online=False)
    shell.tick(T0)
    shell.tick(T0 + 1)
    assert shell.state.step == 0 and "prod-a" not in shell.given()
    assert "step canary: every cluster is offline" in shell.state.reason
    assert "fleetops-hub rollout promote web" in shell.state.reason
    assert rollout.promote(shell.state) == "step 1 promoted"
    assert rollout.promote(shell.state) == "", "a second promote of the same step does nothing"
    shell.tick(T0 + 2)
    assert shell.state.step == 1 and "prod-a" in shell.given()


def test_an_offline_cluster_never_fails_by_the_deadline_while_away() -> None:
    pol = policy(step("canary"), progress_deadline=5 * MIN)
    shell = Shell(pol, {"c1": 0})
    shell.tick(T0)
    shell.set("c1", online=False)
    shell.tick(T0 + MIN)
    shell.tick(T0 + 60 * MIN)
    assert shell.phase("c1") == "Deferred"
    shell.set("c1", online=True)
    shell.report("c1", healthy=False)
    shell.tick(T0 + 61 * MIN)
    assert shell.phase("c1") == "Progressing", "its deadline counts again from its return"
    shell.tick(T0 + 67 * MIN)
    assert shell.phase("c1") == "Failed"


# -- gates


def test_prometheus_is_due_every_interval_while_baking() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0})
    shell.tick(T0)
    assert rollout.due(shell.state, shell.policy, GATES, T0) == [], "not baking yet"
    shell.report("canary")
    shell.tick(T0 + 1)
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 1) == [("canary", "error-rate")]
    shell.record("canary", "error-rate", "pass", T0 + 1, 0.001)
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 30) == []
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 31) == [("canary", "error-rate")]


def test_prometheus_fails_the_cluster_after_failure_limit_failures_in_a_row() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.record("canary", "error-rate", "fail", T0 + 30, 0.2)
    shell.record("canary", "error-rate", "pass", T0 + 60, 0.0)
    shell.record("canary", "error-rate", "fail", T0 + 90, 0.2)
    shell.tick(T0 + 91)
    assert shell.phase("canary") == "Baking", "a pass in between: not two in a row"
    shell.record("canary", "error-rate", "fail", T0 + 120, 0.3)
    shell.tick(T0 + 121)
    assert shell.phase("canary") == "Failed"
    assert shell.state.clusters["canary"].reason == "gate error-rate failed: error-rate: fail 0.3"


def test_no_data_with_wait_holds_the_cluster_and_says_why() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    rollout.record(
        shell.state,
        cluster="canary",
        gate=ERROR_RATE,
        reading=Reading("nodata", None, "error-rate: the query returned no series", T0 + 700),
    )
    shell.tick(T0 + 701)
    c = shell.state.clusters["canary"]
    assert c.phase == "Baking"
    assert c.reason == "baked; waiting: error-rate: the query returned no series"
    shell.record("canary", "error-rate", "pass", T0 + 730, 0.0)
    shell.tick(T0 + 731)
    assert shell.phase("canary") == "Passed"


@pytest.mark.parametrize(("no_data", "phase"), [("fail", "Failed"), ("pass", "Passed")])
def test_no_data_fails_or_passes_as_configured(no_data: str, phase: str) -> None:
    assert ERROR_RATE.prometheus is not None
    gate = dataclasses.replace(
        ERROR_RATE,
        prometheus=dataclasses.replace(ERROR_RATE.prometheus, no_data=no_data, failure_limit=1),
    )
    shell = Shell(gate_rollout("error-rate"), {"canary": 0}, gates={"error-rate": gate})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.record("canary", "error-rate", "nodata", T0 + 700)
    shell.tick(T0 + 701)
    assert shell.phase("canary") == phase


def test_measurement_errors_fail_only_after_error_limit_in_a_row() -> None:
    shell = Shell(gate_rollout("error-rate", bake=MIN), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    at = T0 + 1
    for _ in range(rollout.ERROR_LIMIT - 1):
        at += 30
        shell.record("canary", "error-rate", "error", at)
    shell.record("canary", "error-rate", "pass", at + 1, 0.0)  # one good reading: the row ends
    for _ in range(rollout.ERROR_LIMIT - 1):
        at += 30
        shell.record("canary", "error-rate", "error", at)
    shell.tick(at)
    assert shell.phase("canary") == "Baking"
    assert "error-rate: error None" in shell.state.clusters["canary"].reason
    shell.record("canary", "error-rate", "error", at + 30)
    shell.tick(at + 30)
    assert shell.phase("canary") == "Failed"
    assert shell.state.clusters["canary"].reason.startswith(
        f"gate error-rate could not be measured {rollout.ERROR_LIMIT} times"
    )


def test_a_webhook_is_called_once_the_bake_is_over_and_its_pass_passes() -> None:
    shell = Shell(gate_rollout("smoke"), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 5 * MIN) == []
    end = T0 + 1 + 10 * MIN
    assert rollout.due(shell.state, shell.policy, GATES, end) == [("canary", "smoke")]
    shell.tick(end)
    assert shell.phase("canary") == "Baking", "baked, but the webhook has not answered"
    shell.record("canary", "smoke", "pass", end + 1)
    assert rollout.due(shell.state, shell.policy, GATES, end + 999) == [], "called once"
    shell.tick(end + 2)
    assert shell.phase("canary") == "Passed"


def test_a_webhook_answering_500_fails_the_cluster() -> None:
    shell = Shell(gate_rollout("smoke", bake=0.0), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    rollout.record(
        shell.state,
        cluster="canary",
        gate=SMOKE,
        reading=Reading("fail", None, "smoke: webhook answered 500: broken", T0 + 2),
    )
    shell.tick(T0 + 3)
    assert shell.state.phase == "Failed"
    assert "canary: gate smoke failed: smoke: webhook answered 500: broken" in shell.state.reason


def test_a_manual_gate_holds_until_promote() -> None:
    shell = Shell(gate_rollout("approve", bake=MIN), {"canary": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 1) == []
    shell.tick(T0 + 10 * MIN)
    c = shell.state.clusters["canary"]
    assert c.phase == "Baking"
    assert "gate approve waits for `fleetops-hub rollout promote web`" in c.reason
    rollout.promote(shell.state)
    shell.tick(T0 + 11 * MIN)
    assert shell.phase("canary") == "Passed" and "prod-a" in shell.given()


def test_readings_older_than_the_bake_start_are_dropped() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + MIN)
    shell.record("canary", "error-rate", "fail", T0 + 30, 0.5)  # taken before it baked
    assert shell.state.clusters["canary"].gates == {}
    shell.record("canary", "error-rate", "pass", T0 + 2 * MIN, 0.0)
    shell.record("canary", "error-rate", "fail", T0 + 90, 0.5)  # late, older than the last
    assert shell.state.clusters["canary"].gates["error-rate"].verdict == "pass"


def test_a_failing_webhook_is_called_again_after_its_interval() -> None:
    assert SMOKE.webhook is not None
    twice = dataclasses.replace(
        SMOKE, webhook=dataclasses.replace(SMOKE.webhook, failure_limit=2, interval=60.0)
    )
    shell = Shell(gate_rollout("smoke", bake=0.0), {"canary": 0}, gates={"smoke": twice})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.record("canary", "smoke", "fail", T0 + 2)
    shell.tick(T0 + 3)
    assert shell.phase("canary") == "Baking", "one failure of two allowed"
    assert rollout.due(shell.state, shell.policy, shell.gates, T0 + 61) == []
    assert rollout.due(shell.state, shell.policy, shell.gates, T0 + 62) == [("canary", "smoke")]


def test_a_gate_named_twice_in_a_step_is_measured_once() -> None:
    pol = policy(step("canary", bake=MIN, gates=("error-rate", "error-rate")))
    shell = Shell(pol, {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert rollout.due(shell.state, pol, GATES, T0 + 1) == [("canary", "error-rate")]


def test_a_reading_without_a_real_time_is_dropped() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.record("canary", "error-rate", "pass", math.nan, 0.0)
    assert shell.state.clusters["canary"].gates == {}
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 2) == [("canary", "error-rate")]


def test_nothing_is_due_once_the_rollout_is_over() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.state.phase = rollout.SUPERSEDED
    assert rollout.due(shell.state, shell.policy, GATES, T0 + 2) == []


# -- operator: promote, pause


def test_promote_skips_the_bake_and_gates_of_the_running_step_but_not_health() -> None:
    pol = policy(step("canary", bake=30 * MIN, gates=("error-rate", "smoke")), step("prod"))
    shell = Shell(pol, {"c1": 0, "c2": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + 1)
    shell.record("c1", "error-rate", "fail", T0 + 2, 0.9)
    rollout.promote(shell.state)
    shell.tick(T0 + 3)
    assert shell.phases() == {"c1": "Passed", "c2": "Progressing", "prod-a": "Waiting"}
    shell.report("c2")
    shell.tick(T0 + 4)
    assert shell.phase("c2") == "Passed" and "prod-a" in shell.given()
    assert shell.state.clusters["c1"].reason == "promoted by an operator"


def test_pause_admits_nobody_new_but_the_bake_goes_on() -> None:
    pol = policy(step("canary", parallel=1, bake=MIN), step("prod"))
    shell = Shell(pol, {"c1": 0, "c2": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + 1)
    shell.state.phase = rollout.PAUSED
    shell.tick(T0 + 2 * MIN)
    assert shell.phase("c1") == "Passed", "the clock ran while paused"
    assert shell.given() == {"c1"}, "the free slot stays free while paused"
    assert rollout.due(shell.state, pol, GATES, T0) == []
    shell.state.phase = rollout.RUNNING
    shell.tick(T0 + 3 * MIN)
    assert shell.given() == {"c1", "c2"}


def test_a_failure_while_paused_still_fails_the_rollout() -> None:
    pol = policy(step("canary"), progress_deadline=MIN)
    shell = Shell(pol, {"c1": 0})
    shell.tick(T0)
    shell.state.phase = rollout.PAUSED
    shell.tick(T0 + 2 * MIN)
    assert shell.state.phase == "Failed"


def test_promote_lets_every_waiting_cluster_of_the_step_go_at_once() -> None:
    pol = policy(step("canary", parallel=1, bake=MIN))
    shell = Shell(pol, {"c1": 0, "c2": 0, "c3": 0})
    shell.tick(T0)
    assert shell.given() == {"c1"}
    rollout.promote(shell.state)
    shell.tick(T0 + 1)
    assert shell.given() == {"c1", "c2", "c3"}


# -- membership


def test_a_cluster_already_on_r_is_kept_and_not_failed_by_the_deadline() -> None:
    pol = policy(step("canary", bake=MIN), step("prod"), progress_deadline=5 * MIN)
    shell = Shell(pol, {"canary": 0, "prod-a": 1}, on_r=("prod-a",))
    assert "prod-a" in shell.given(), "not sent back to the old revision"
    assert shell.state.clusters["prod-a"].previous == ""
    shell.set("prod-a", healthy=False, status="Synced/Progressing")
    shell.tick(T0 + MIN)
    assert shell.phase("prod-a") == "Progressing"
    shell.tick(T0 + 6 * MIN)
    assert shell.phase("prod-a") == "Failed", "its deadline counts from the start"


def test_a_cluster_joining_mid_rollout_waits_in_its_step() -> None:
    shell = Shell(policy(step("canary", bake=MIN), step("prod")), {"canary": 0})
    shell.tick(T0)
    shell.join("prod-new", 1)
    shell.tick(T0 + 1)
    assert shell.phase("prod-new") == "Waiting" and "prod-new" not in shell.given()
    shell.join("canary-new", 0)
    shell.report("canary")
    shell.tick(T0 + 2)
    shell.tick(T0 + 3 * MIN)
    assert shell.state.step == 0, "the step waits for the cluster that joined it"
    assert "canary-new" in shell.given()


def test_a_cluster_joining_a_step_that_passed_catches_up_and_one_gone_is_forgotten() -> None:
    shell = Shell(policy(step("canary"), step("prod", parallel=1)), {"canary": 0, "p1": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.join("late-canary", 0)
    shell.tick(T0 + 2)
    assert "late-canary" in shell.given()
    del shell.facts["p1"]
    shell.tick(T0 + 3)
    assert "p1" not in shell.state.clusters


def test_a_waiting_cluster_whose_labels_moved_it_waits_in_its_new_step() -> None:
    shell = Shell(policy(step("canary", bake=MIN), step("prod")), {"c1": 0, "p1": 1})
    shell.tick(T0)
    shell.set("p1", step=0)
    shell.tick(T0 + 1)
    assert shell.state.clusters["p1"].step == 0 and "p1" in shell.given()


def test_unmatched_exclude_clusters_are_excluded_and_never_admitted() -> None:
    shell = Shell(policy(step("canary")), {"canary": 0, "lab": -1}, on_r=("lab",))
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert shell.state.phase == "Succeeded"
    assert shell.phase("lab") == "Excluded" and "lab" not in shell.given()


# -- persistence (a hub restarted mid-bake)


def test_a_state_mid_bake_round_trips_through_json_exactly() -> None:
    shell = Shell(gate_rollout("error-rate"), {"canary": 0, "prod-a": 1, "lab": -1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1.25)
    shell.record("canary", "error-rate", "fail", T0 + 31.5, 0.125)
    rollout.promote(shell.state)
    saved = json.loads(json.dumps(shell.state.to_json()))
    restored = rollout.State.from_json(saved)
    assert restored == shell.state
    assert restored.clusters["canary"].gates["error-rate"].failures == 1
    assert restored.to_json() == saved


def test_a_restored_state_keeps_the_bake_clock() -> None:
    pol = policy(step("canary", bake=10 * MIN), step("prod"))
    shell = Shell(pol, {"canary": 0, "prod-a": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + MIN)
    shell.state = rollout.State.from_json(json.loads(json.dumps(shell.state.to_json())))
    shell.tick(T0 + 10 * MIN)
    assert shell.phase("canary") == "Baking"
    assert rollout.left(shell.state, pol, "canary", T0 + 10 * MIN) == pytest.approx(MIN)
    shell.tick(T0 + 11 * MIN)
    assert shell.phase("canary") == "Passed"


def test_a_saved_state_with_a_field_this_hub_does_not_know_still_loads() -> None:
    shell = Shell(TWO_STEPS, {"canary": 0})
    doc = shell.state.to_json()
    doc["from_a_newer_hub"] = 1
    doc["clusters"]["canary"]["also_newer"] = "x"
    assert rollout.State.from_json(doc).clusters["canary"].phase == "Waiting"


# -- revert


def test_revert_targets_prefer_what_ran_before_then_last_good_and_list_the_stuck() -> None:
    shell = Shell(
        policy(step("canary"), step("prod")),
        {"a": 0, "b": 0, "c": 0, "d": 0, "waiting": 1},
        on_r=("c",),
    )
    shell.tick(T0)
    back, stuck = rollout.revert_targets(
        shell.state, last_good={"a": "good-a", "b": "good-b", "d": R}, rejected={"x"}
    )
    # what each ran just before R (OLD) wins over an older last good revision
    assert back == {"a": OLD, "b": OLD, "d": OLD}
    assert stuck == ["c"]
    # unless that was rejected too: then its last good revision
    back, _ = rollout.revert_targets(shell.state, last_good={"a": "good-a"}, rejected={OLD})
    assert back == {"a": "good-a"}


def test_revert_goes_back_to_what_ran_just_before_r_was_given() -> None:
    shell = Shell(policy(step("canary"), step("prod")), {"canary": 0, "p": 1})
    shell.tick(T0)
    shell.set("p", assigned="middle0", generation=9)  # auto-sync moved it meanwhile
    shell.report("canary")
    shell.tick(T0 + 1)
    back, _ = rollout.revert_targets(shell.state, last_good={})
    assert back == {"canary": OLD, "p": "middle0"}


# -- odd input never crashes the machine


def test_a_cluster_whose_step_is_past_the_last_goes_with_the_last_step() -> None:
    shell = Shell(policy(step("canary"), step("prod")), {"canary": 0, "odd": 7})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert "odd" in shell.given()
    shell.report("odd")
    shell.tick(T0 + 2)
    assert shell.state.phase == "Succeeded"


def test_advance_never_raises_on_odd_facts_and_readings() -> None:
    zero = rolloutspec.Gate(
        "zero",
        prometheus=dataclasses.replace(ERROR_RATE.prometheus, failure_limit=0),  # type: ignore[arg-type]
    )
    pol = policy(
        step("canary", parallel=-3, bake=math.inf, gates=("zero", "missing")),
        progress_deadline=math.inf,
    )
    names = {"": 0, "x" * 10_000: 99, "\x1b[31mred": -7, "ünï": 0}
    shell = Shell(pol, names, gates={"zero": zero})
    shell.state.step = -4
    for now in (T0, T0 + 1, T0 + 2):
        shell.tick(now)
        for n in list(shell.facts):
            shell.report(n, generation=-1 if now == T0 else None)
            rollout.record(
                shell.state, cluster=n, gate=zero, reading=Reading("weird", math.nan, "", now)
            )
        rollout.due(shell.state, pol, {"zero": zero}, now)
    assert shell.phase("\x1b[31mred") == "Excluded"
    assert shell.given() == {""}, "maxParallel below one still lets one go"
    assert shell.phase("") == "Baking", "a nonsense reading neither fails nor passes"
    shell.state.clusters["ünï"].step = 40  # a stored state from a longer policy
    shell.tick(T0 + 3)
    assert rollout.left(shell.state, pol, "ünï", T0 + 3) == 0.0


def test_a_saved_state_with_steps_no_policy_has_and_an_empty_policy_never_raise() -> None:
    pol = policy(step("canary", bake=MIN), step("prod"))
    shell = Shell(pol, {"c1": 0, "excluded-now": 1})
    shell.tick(T0)
    shell.report("c1")
    shell.tick(T0 + 1)
    shell.state.clusters["c1"].step = -3  # a saved state, hand-edited or from an odd hub
    shell.state.clusters["excluded-now"].took = True
    shell.state.clusters["excluded-now"].step = -5
    shell.set("excluded-now", step=-1)
    shell.tick(T0 + 2)
    assert shell.state.clusters["c1"].step == 0, "put back where its facts say"
    assert rollout.due(shell.state, pol, GATES, T0 + 2) == []
    assert rollout.left(shell.state, pol, "excluded-now", T0 + 2) == 0.0
    shell.tick(T0 + 2 * MIN)
    assert shell.phase("c1") == "Passed"
    empty = policy()
    rollout.advance(shell.state, policy=empty, gates={}, facts=shell.facts, now=T0 + 3 * MIN)
    assert rollout.due(shell.state, empty, {}, T0 + 3 * MIN) == []


def test_random_walks_never_raise_and_keep_the_order_of_steps() -> None:
    """Seeded random shells: clusters flap online, report any generation, revision and health,
    gates read anything at any time. The machine never raises, never gives R to a cluster of a
    step that has not started (unless it ran R before the rollout), and its state always
    survives JSON."""
    rng = random.Random(14)
    pol = policy(
        step("canary", parallel=1, bake=MIN, gates=("error-rate", "smoke")),
        step("eu", percent=50, bake=2 * MIN, gates=("approve",)),
        step("prod", percent=25),
        progress_deadline=3 * MIN,
        max_failures=1,
    )
    verdicts = ("pass", "fail", "nodata", "error", "weird")
    for _ in range(60):
        sizes = {f"c{i}": rng.randrange(-1, 5) for i in range(rng.randrange(1, 9))}
        on_r = tuple(n for n in sizes if rng.random() < 0.15)
        shell = Shell(pol, sizes, on_r=on_r)
        before = {n for n in on_r if sizes[n] >= 0}
        now = T0
        for _ in range(40):
            now += rng.choice((0.0, 1.0, 30.0, 61.0, 200.0))
            name = rng.choice(sorted(shell.facts))
            roll = rng.random()
            if roll < 0.15:
                shell.set(name, online=not shell.facts[name].online)
            elif roll < 0.6:
                shell.report(
                    name,
                    healthy=rng.random() < 0.8,
                    applied=rng.choice((R, R, OLD)),
                    generation=shell.facts[name].generation + rng.choice((-1, 0, 0, 1)),
                )
            elif roll < 0.85:
                gate = rng.choice(sorted(GATES))
                shell.record(name, gate, rng.choice(verdicts), now - rng.choice((0, 90)), 0.5)
            elif roll < 0.9:
                rollout.promote(shell.state)
            elif roll < 0.95:
                shell.join(f"j{rng.randrange(9)}", rng.randrange(-2, 6))
            else:
                shell.state.phase = rng.choice((rollout.RUNNING, rollout.PAUSED))
            shell.tick(now)
            rollout.due(shell.state, pol, GATES, now)
            for n in shell.given() - before:
                c = shell.state.clusters.get(n)
                assert c is None or c.step <= shell.state.step, (n, c, shell.state.step)
            doc = json.loads(json.dumps(shell.state.to_json()))
            assert rollout.State.from_json(doc) == shell.state
            if shell.state.phase not in rollout.ACTIVE:
                break


# -- the review's findings, as the attack


def test_a_step_whose_every_cluster_failed_fails_even_when_max_failures_allows_one() -> None:
    shell = Shell(policy(step("canary"), step("prod"), max_failures=1), {"canary": 0, "prod": 1})
    shell.tick(T0)
    shell.report("canary", healthy=False, status="Synced/Degraded")
    shell.tick(T0 + 11 * MIN)  # past the 10 m deadline
    assert shell.phase("canary") == rollout.FAILED
    assert shell.state.phase == rollout.FAILED_ROLLOUT, shell.state.reason
    assert "prod" not in shell.given()


def test_a_baking_cluster_that_keeps_losing_its_health_fails_instead_of_flapping_forever() -> None:
    shell = Shell(TWO_STEPS, {"canary": 0, "prod": 1})
    shell.tick(T0)
    now = T0
    for _ in range(rollout.RELAPSE_LIMIT + 1):
        shell.report("canary")
        now += MIN
        shell.tick(now)
        assert shell.phase("canary") == rollout.BAKING
        shell.report("canary", healthy=False, status="Synced/Degraded: CrashLoopBackOff")
        now += MIN
        shell.tick(now)
    assert shell.phase("canary") == rollout.FAILED
    assert "flapping" in shell.state.clusters["canary"].reason
    assert shell.state.phase == rollout.FAILED_ROLLOUT


def test_after_a_hub_restart_a_stored_report_neither_passes_nor_resets_a_bake() -> None:
    shell = Shell(TWO_STEPS, {"canary": 0, "prod": 1})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    assert shell.phase("canary") == rollout.BAKING
    saved = rollout.State.from_json(json.loads(json.dumps(shell.state.to_json())))
    shell.state = saved
    shell.set("canary", fresh=False)  # the hub restarted: only the stored report is known
    shell.tick(T0 + 20 * MIN)  # the bake (10 m) is over by the clock
    assert shell.phase("canary") == rollout.BAKING and "prod" not in shell.given()
    assert shell.state.clusters["canary"].healthy_since == T0 + 1  # the clock stood intact
    shell.set("canary", fresh=True)  # the agent reported again, still Healthy
    shell.tick(T0 + 20 * MIN + 1)
    assert shell.phase("canary") == rollout.PASSED and "prod" in shell.given()


def test_frozen_clocks_stand_still_while_the_app_is_paused() -> None:
    shell = Shell(TWO_STEPS, {"canary": 0, "prod": 1})
    shell.tick(T0)  # canary given R, its 10 m deadline runs
    rollout.freeze(shell.state, T0 + MIN)
    rollout.thaw(shell.state, T0 + 60 * MIN)  # paused for 59 minutes
    shell.tick(T0 + 61 * MIN)
    assert shell.phase("canary") == rollout.PROGRESSING  # 2 minutes of deadline used, not 61
    shell.report("canary")
    shell.tick(T0 + 62 * MIN)
    assert shell.phase("canary") == rollout.BAKING


def test_steps_edited_in_hub_yaml_mid_rollout_are_followed_by_name() -> None:
    three = policy(step("canary"), step("eu"), step("prod", parallel=1))
    shell = Shell(three, {"canary": 0, "eu": 1, "p1": 2, "p2": 2, "p3": 2})
    for n in ("p1", "p2", "p3"):
        shell.set(n, step=2)
    shell.tick(T0)
    for name in ("canary", "eu"):
        shell.report(name)
        shell.tick(T0 + 1)
        shell.tick(T0 + 2)
    assert shell.state.step == 2 and len({"p1", "p2", "p3"} & shell.given()) == 1
    # the operator removes "eu": prod is step 1 now, still one at a time
    shell.policy = policy(step("canary"), step("prod", parallel=1))
    for n in ("p1", "p2", "p3"):
        shell.set(n, step=1)
    shell.set("eu", step=1)
    shell.tick(T0 + 3)
    assert shell.state.step == 1
    assert len({"p1", "p2", "p3"} & shell.given()) == 1, shell.phases()


def test_promote_after_every_step_passed_does_nothing() -> None:
    shell = Shell(policy(step("canary")), {"canary": 0})
    shell.tick(T0)
    shell.report("canary")
    shell.tick(T0 + 1)
    shell.state.phase = rollout.RUNNING  # as if a late comer kept it running
    shell.state.step = 1
    assert rollout.promote(shell.state) == ""
