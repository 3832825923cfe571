"""Rollout scenarios against a real hub process (issue 14, "How it will be checked"): real
Git commits, the real `fleetops-hub serve`, a real Prometheus scraping an exporter the test
controls, a real HTTP webhook receiver on loopback; fake agents (tests/support/rollouts.py)
stand in for the clusters, reporting Healthy / Progressing / Degraded when the test says so.
Bakes are seconds long and gates measure every second, so each scenario takes a few seconds
(the offline one waits out the hub's grace for reconnecting agents after its start)."""

from __future__ import annotations

import pathlib

from fleetops.proto.v1 import fleet_pb2
from tests.support import rollouts

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
