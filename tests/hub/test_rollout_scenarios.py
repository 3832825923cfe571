"""Rollout scenarios against a real hub process (issue 14, "How it will be checked"): real
Git commits, the real `fleetops-hub serve` (killed with SIGKILL and started again where the
scenario says so), a real Prometheus scraping an exporter the test controls, a real HTTP
webhook receiver on loopback; fake agents (tests/support/rollouts.py) stand in for the
clusters, reporting Healthy / Progressing / Degraded when the test says so, and going offline.

Bakes are seconds long and gates measure every second, so most scenarios take a few seconds.
Two take longer by what they check: the hub killed mid-bake bakes 20 s, and an offline cluster
is Deferred only once the hub's grace for agents reconnecting after its start is over
(hub.rollouts.OFFLINE_GRACE, 30 s)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest

from fleetops.hub import gates
from fleetops.hub import rollouts as hub_rollouts
from fleetops.proto.v1 import fleet_pb2, types_pb2
from tests.support import exporter, prometheus, rollouts

CANARY_PROD = {"canary": "canary", "prod-a": "prod", "prod-b": "prod"}


def cell(r: fleet_pb2.Rollout, cluster: str) -> fleet_pb2.RolloutCluster:
    return next(c for c in r.clusters if c.cluster == cluster)


def two_steps(
    *, bake: str = "2s", prod: dict[str, object] | None = None, **more: object
) -> dict[str, object]:
    return {
        "steps": [
            {"name": "canary", "clusterGroup": "canary", "maxParallel": 1, "bake": bake},
            {"name": "prod", "clusterGroup": "prod", **(prod or {})},
        ],
        "progressDeadline": "30s",
        "onFailure": "revert",
        **more,
    }


async def test_promote_passes_a_ten_minute_bake_at_once(tmp_path: pathlib.Path) -> None:
    async with rollouts.running(
        tmp_path, clusters=CANARY_PROD, rollout=two_steps(bake="10m")
    ) as sc:
        old = await sc.baseline()
        rev = await sc.commit()
        r = await sc.until(
            "the canary baking the new commit",
            lambda r: r.revision == rev and cell(r, "canary").phase == "Baking",
        )
        assert cell(r, "canary").bake_left_seconds > 590
        assert sc.agents["prod-a"].runs() == old and sc.agents["prod-b"].runs() == old
        said = await sc.action("promote")
        assert "canary" in said, said
        await sc.until("the rollout to succeed", lambda r: r.phase == "Succeeded", within=10)
        assert all(a.runs() == rev for a in sc.agents.values())
        r = await sc.rollout()
        assert r.steps[0].promoted and "promoted" in cell(r, "canary").reason


async def test_a_commit_mid_rollout_supersedes_and_restarts_from_the_first_step(
    tmp_path: pathlib.Path,
) -> None:
    policy = two_steps(prod={"maxParallel": 1})
    async with rollouts.running(tmp_path, clusters=CANARY_PROD, rollout=policy) as sc:
        old = await sc.baseline()
        sc.agents["prod-a"].set_health(rollouts.PROGRESSING)  # R1 stays in flight on prod-a
        r1 = await sc.commit("web r1")
        await sc.until(
            "prod-a in flight with r1",
            lambda r: r.revision == r1 and r.step == 1 and cell(r, "prod-a").phase == "Progressing",
        )
        await sc.until_true("prod-a to run r1", lambda: sc.agents["prod-a"].runs() == r1)
        r2 = await sc.commit("web r2")
        r = await sc.until("the rollout of r2", lambda r: r.revision == r2)
        assert r.step == 0 and r.phase == "Running", sc.explain()
        assert r1 not in r.rejected, r.rejected
        await sc.until("the canary given r2", lambda r: cell(r, "canary").phase != "Waiting")

        async def kept() -> bool:
            d = await sc.desired()
            r = await sc.rollout()
            return r.step > 0 or (d["prod-a"] == r1 and d["prod-b"] == old)

        await sc.holds("prod keeps what it had while the canary takes r2", kept, seconds=1.5)
        sc.agents["prod-a"].set_health(rollouts.HEALTHY)
        r = await sc.until("r2 to succeed", lambda r: r.phase == "Succeeded", within=20)
        assert all(a.runs() == r2 for a in sc.agents.values()), sc.explain()
        assert not r.rejected, r.rejected
        assert sc.agents["prod-a"].given[-2:] == [r1, r2]
        events = [e.message for e in await sc.history()]
        assert any("superseded" in m for m in events), events


async def test_pause_resume_abort_retry_and_actions_without_a_running_rollout(
    tmp_path: pathlib.Path,
) -> None:
    policy = two_steps(bake="1s", prod={"maxParallel": 1, "bake": "2s"})
    async with rollouts.running(tmp_path, clusters=CANARY_PROD, rollout=policy) as sc:
        old = await sc.baseline()
        for action in ("promote", "pause"):
            with pytest.raises(grpc.RpcError) as no:
                await sc.action(action)
            assert no.value.code() == grpc.StatusCode.FAILED_PRECONDITION, action
            assert "web" in (no.value.details() or ""), no.value.details()

        rev = await sc.commit()
        await sc.until("prod-a given the commit", lambda r: r.revision == rev and r.step == 1)
        await sc.action("pause")
        r = await sc.until("the rollout paused", lambda r: r.phase == "Paused")
        flying = [c.cluster for c in r.clusters if c.step == "prod" and c.phase != "Waiting"]
        assert len(flying) == 1, sc.explain()
        first = flying[0]
        other = "prod-b" if first == "prod-a" else "prod-a"
        await sc.until(f"{first} to pass its bake", lambda r: cell(r, first).phase == "Passed")

        async def held() -> bool:
            return (await sc.desired())[other] == old and sc.agents[other].runs() == old

        await sc.holds(f"{other} not given the commit while paused", held, seconds=2.5)
        sc.agents[other].set_health(rollouts.PROGRESSING)
        await sc.action("resume")
        await sc.until(f"{other} given the commit", lambda r: cell(r, other).phase == "Progressing")
        await sc.until_true(f"{other} to run the commit", lambda: sc.agents[other].runs() == rev)

        await sc.action("abort")
        r = await sc.until("the rollout aborted", lambda r: r.phase == "Aborted")
        assert rev in r.rejected, r.rejected
        await sc.until_true(
            "every cluster back on the old revision",
            lambda: all(a.runs() == old for a in sc.agents.values()),
        )
        d = await sc.desired()
        assert set(d.values()) == {old}, d

        sc.agents[other].set_health(rollouts.HEALTHY)
        await sc.action("retry")
        r = await sc.until(
            "the commit rolling again from the first step",
            lambda r: r.revision == rev and r.phase == "Running",
        )
        assert r.step == 0 and not r.rejected, sc.explain()
        await sc.until("the retried rollout to succeed", lambda r: r.phase == "Succeeded")
        assert all(a.runs() == rev for a in sc.agents.values()), sc.explain()


async def test_max_parallel_50_percent_never_has_more_than_two_of_four_in_flight(
    tmp_path: pathlib.Path,
) -> None:
    prods = {f"prod-{i}": "prod" for i in range(4)}
    policy = {
        "steps": [{"name": "prod", "clusterGroup": "prod", "maxParallel": "50%", "bake": "2s"}],
        "progressDeadline": "30s",
    }
    async with rollouts.running(tmp_path, clusters=prods, rollout=policy) as sc:
        await sc.baseline()
        rev = await sc.commit()
        most = 0
        seen: list[tuple[str, ...]] = []

        async def sample() -> bool:
            nonlocal most
            # the agents first: whatever runs the revision now was admitted before the status
            running = sum(1 for a in sc.agents.values() if a.runs() == rev)
            r = await sc.rollout()
            if r.revision != rev:
                return False
            flying = tuple(c.cluster for c in r.clusters if c.phase in ("Progressing", "Baking"))
            passed = sum(1 for c in r.clusters if c.phase == "Passed")
            most = max(most, len(flying), running - passed)
            seen.append(flying)
            return r.phase == "Succeeded"

        await sc.until_true("the rollout over four clusters to succeed", sample, within=30)
        assert most == 2, f"at most 2 of 4 in flight, saw {most}: {seen}"
        assert all(a.runs() == rev for a in sc.agents.values())


ERROR_RATE = (
    'sum(rate(http_requests_total{cluster="{{cluster}}",code="500"}[5s]))'
    ' / sum(rate(http_requests_total{cluster="{{cluster}}"}[5s]))'
)


def error_rate(url: str, no_data: str) -> dict[str, object]:
    return {
        "name": "error-rate",
        "prometheus": {
            "url": url,
            "query": ERROR_RATE,
            "pass": "< 0.05",
            "interval": "1s",
            "failureLimit": 1,
            "noData": no_data,
        },
    }


def gated(gate: str, *, bake: str = "2s") -> dict[str, object]:
    policy = two_steps(bake=bake)
    policy["steps"][0]["gates"] = [gate]  # type: ignore[index]
    return policy


@dataclasses.dataclass
class Metrics:
    exporter: exporter.Exporter
    prom: prometheus.Prometheus


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metrics]:
    """One Prometheus for the module, scraping an exporter every second; each test's canary
    has a name of its own, so one test's series are not another's."""
    with (
        exporter.serving() as served,
        prometheus.running(tmp_path_factory.mktemp("prom"), targets=[served.address]) as prom,
    ):
        yield Metrics(served, prom)


async def test_prometheus_no_data_wait_holds_the_canary_and_says_why_until_data_arrives(
    tmp_path: pathlib.Path, metrics: Metrics
) -> None:
    canary = "canary-wait"
    async with rollouts.running(
        tmp_path,
        clusters={canary: "canary", "prod-a": "prod", "prod-b": "prod"},
        rollout=gated("error-rate"),
        gates=[error_rate(metrics.prom.url, "wait")],
    ) as sc:
        old = await sc.baseline()
        rev = await sc.commit()
        r = await sc.until(
            "the canary baked and held by the gate",
            lambda r: (
                r.revision == rev
                and cell(r, canary).phase == "Baking"
                and cell(r, canary).bake_left_seconds == 0
                and "no series" in cell(r, canary).reason
            ),
        )
        reading = cell(r, canary).gates[0]
        assert reading.verdict == "nodata" and reading.threshold == "< 0.05", reading
        assert "noData: wait" in reading.message, reading.message

        async def held() -> bool:
            r = await sc.rollout()
            d = await sc.desired()
            return cell(r, canary).phase == "Baking" and d["prod-a"] == d["prod-b"] == old

        await sc.holds("the canary held past its bake, prod untouched", held, seconds=2.5)
        metrics.exporter.requests(canary, ok=100, errors=0, per_second=True)
        r = await sc.until("data to let the rollout succeed", lambda r: r.phase == "Succeeded")
        reading = cell(r, canary).gates[0]
        assert reading.verdict == "pass" and reading.has_value and reading.value == 0, reading
        assert all(a.runs() == rev for a in sc.agents.values()), sc.explain()


async def test_prometheus_no_data_fail_fails_the_canary_and_reverts(
    tmp_path: pathlib.Path, metrics: Metrics
) -> None:
    canary = "canary-fail"
    async with rollouts.running(
        tmp_path,
        clusters={canary: "canary", "prod-a": "prod", "prod-b": "prod"},
        rollout=gated("error-rate"),
        gates=[error_rate(metrics.prom.url, "fail")],
    ) as sc:
        old = await sc.baseline()
        rev = await sc.commit()
        r = await sc.until("the rollout to fail", lambda r: r.phase == "Failed")
        assert r.revision == rev and rev in r.rejected, sc.explain()
        assert "error-rate" in r.reason and "no series" in r.reason, r.reason
        await sc.until_true(
            "the canary back on the old revision", lambda: sc.agents[canary].runs() == old
        )
        assert rev not in sc.agents["prod-a"].given + sc.agents["prod-b"].given


async def test_a_webhook_gate_answering_500_fails_the_canary_and_a_200_passes_signed(
    tmp_path: pathlib.Path,
) -> None:
    key = "gate-key-4b1d9e-not-for-logs"
    key_file = tmp_path / "gate-key"
    key_file.write_text(key + "\n")
    with rollouts.receiving() as receiver:
        smoke = {
            "name": "smoke",
            "webhook": {
                "url": receiver.url,
                "timeout": "5s",
                "secretFile": str(key_file),
                "interval": "1s",
            },
        }
        async with rollouts.running(
            tmp_path, clusters=CANARY_PROD, rollout=gated("smoke", bake="1s"), gates=[smoke]
        ) as sc:
            old = await sc.baseline()
            receiver.answer(500, "smoke failed")
            bad = await sc.commit()
            r = await sc.until("the rollout to fail", lambda r: r.phase == "Failed")
            assert r.revision == bad and bad in r.rejected, sc.explain()
            assert "smoke failed" in r.reason and "canary" in r.reason, r.reason
            await sc.until_true(
                "the canary back on the old revision", lambda: sc.agents["canary"].runs() == old
            )
            assert bad not in sc.agents["prod-a"].given + sc.agents["prod-b"].given

            receiver.answer(200, "smoke passed")
            good = await sc.commit()
            r = await sc.until(
                "the next commit to pass", lambda r: r.revision == good and r.phase == "Succeeded"
            )
            assert all(a.runs() == good for a in sc.agents.values()), sc.explain()
            reading = cell(r, "canary").gates[0]
            assert reading.verdict == "pass" and "smoke passed" in reading.message, reading

            calls = receiver.received()
            assert {c.doc()["revision"] for c in calls} == {bad, good}, calls
            for call in calls:
                signature = call.headers.get(gates.SIGNATURE_HEADER.lower(), "")
                assert gates.verify_signature(call.body, signature, key.encode()), call
                assert not gates.verify_signature(call.body, signature, b"another key")
                doc = call.doc()
                assert (doc["app"], doc["cluster"], doc["gate"]) == ("web", "canary", "smoke")
            said = json.dumps([str(e) for e in await sc.history()]) + sc.hub.process.log.read_text()
            assert key not in said and key not in str(r)


async def test_an_offline_prod_cluster_is_deferred_and_catches_up_when_it_returns(
    tmp_path: pathlib.Path,
) -> None:
    policy = two_steps(bake="1s", progressDeadline="60s")
    async with rollouts.running(tmp_path, clusters=CANARY_PROD, rollout=policy) as sc:
        old = await sc.baseline()
        await sc.agents["prod-b"].go_offline()
        rev = await sc.commit()
        # right after its start the hub gives agents time to reconnect before it calls a
        # cluster offline (rollouts.OFFLINE_GRACE); past it, prod-b is Deferred
        r = await sc.until(
            "prod-b deferred and the prod step passed without it",
            lambda r: (
                r.revision == rev
                and cell(r, "prod-b").phase == "Deferred"
                and cell(r, "prod-a").phase == "Passed"
                and r.step == 2
            ),
            within=hub_rollouts.OFFLINE_GRACE + 15,
        )
        assert r.steps[1].deferred == 1 and r.steps[1].passed == 1, r.steps[1]
        assert "offline" in cell(r, "prod-b").reason, cell(r, "prod-b").reason
        assert sc.agents["prod-b"].runs() == old
        assert sc.agents["canary"].runs() == rev and sc.agents["prod-a"].runs() == rev
        sc.agents["prod-b"].come_back()
        await sc.until_true(
            "prod-b to be given the revision once back", lambda: sc.agents["prod-b"].runs() == rev
        )
        await sc.until("the rollout to succeed", lambda r: r.phase == "Succeeded")
        assert (await sc.desired())["prod-b"] == rev
        # back, on the revision and Healthy: the rollout must not go on calling it offline
        r = await sc.until(
            "prod-b no longer shown as offline once it caught up",
            lambda r: "offline" not in cell(r, "prod-b").reason,
            within=5,
        )
        assert cell(r, "prod-b").gate != types_pb2.ROLLOUT_GATE_DEFERRED, cell(r, "prod-b")


async def test_a_hub_killed_mid_bake_resumes_with_the_bake_clock(tmp_path: pathlib.Path) -> None:
    bake = 20.0
    async with rollouts.running(
        tmp_path, clusters=CANARY_PROD, rollout=two_steps(bake="20s")
    ) as sc:
        old = await sc.baseline()
        rev = await sc.commit()
        r = await sc.until(
            "the canary baking",
            lambda r: r.revision == rev and cell(r, "canary").phase == "Baking",
        )
        began = time.monotonic() - (bake - cell(r, "canary").bake_left_seconds)
        await sc.until(
            "a third of the bake done",
            lambda r: 0 < cell(r, "canary").bake_left_seconds <= bake - 7,
            within=bake,
        )
        await sc.kill_hub()
        await sc.start_hub()
        r = await sc.until("the rollout readable after the restart", lambda r: r.revision == rev)
        baked = time.monotonic() - began
        left = cell(r, "canary").bake_left_seconds
        assert cell(r, "canary").phase == "Baking", sc.explain()
        assert 0 < left <= bake - baked + 1.5, (
            f"{left:.1f} s of bake left right after the restart, {baked:.1f} s after the canary "
            f"first became Healthy: the bake clock did not survive\n{sc.explain()}"
        )
        assert (await sc.desired())["prod-a"] == old
        await sc.until(
            "the canary to pass", lambda r: cell(r, "canary").phase == "Passed", within=bake
        )
        took = time.monotonic() - began
        assert bake - 1.5 <= took <= bake + 4, f"the canary passed {took:.1f} s after Healthy"
        await sc.until("the rollout to succeed", lambda r: r.phase == "Succeeded")
        assert all(a.runs() == rev for a in sc.agents.values()), sc.explain()


async def test_a_rejected_revision_is_never_reassigned_by_auto_sync_across_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    policy = two_steps(bake="1s", progressDeadline="3s")
    async with rollouts.running(tmp_path, clusters=CANARY_PROD, rollout=policy) as sc:
        old = await sc.baseline()
        sc.agents["canary"].set_health(rollouts.DEGRADED, "fake cluster: never Available")
        bad = await sc.commit("web: a bad commit")
        r = await sc.until("the bad commit to fail", lambda r: r.phase == "Failed")
        assert r.revision == bad and bad in r.rejected, sc.explain()
        assert "deadline" in r.reason and "canary" in r.reason, r.reason
        await sc.until_true("the canary back", lambda: sc.agents["canary"].runs() == old)
        sc.agents["canary"].set_health(rollouts.HEALTHY)

        await sc.kill_hub()
        await sc.start_hub()
        r = await sc.until("the rollout readable after the restart", lambda r: r.revision == bad)
        assert bad in r.rejected and r.phase == "Failed", sc.explain()
        await sc.until_true(
            "every agent reconnected", lambda: all(a.connected.is_set() for a in sc.agents.values())
        )

        async def nobody_has_it() -> bool:
            d = await sc.desired()
            return set(d.values()) == {old} and all(a.runs() == old for a in sc.agents.values())

        await sc.holds("no cluster given the rejected head", nobody_has_it, seconds=4)
        assert sc.agents["canary"].given.count(bad) == 1
        assert all(bad not in sc.agents[n].given for n in ("prod-a", "prod-b"))

        fixed = await sc.commit("web: the fix")
        await sc.until(
            "the fix to roll out fresh", lambda r: r.revision == fixed and r.phase == "Succeeded"
        )
        assert all(a.runs() == fixed for a in sc.agents.values()), sc.explain()
