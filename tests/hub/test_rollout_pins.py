"""Pins beat rollouts: a cluster pinned by an operator's rollback runs its pin and is left out
of the app's rollout (never failed by it for not taking the revision), and rejoins it when the
pin is lifted. A real in-process hub with fake agents (tests/support/rolloutfleet.py)."""

from __future__ import annotations

import pathlib

from tests.support import rolloutfleet, wait


async def test_a_pinned_cluster_is_left_out_of_the_rollout_and_rejoins_when_unpinned(
    tmp_path: pathlib.Path,
) -> None:
    async with rolloutfleet.running(tmp_path) as proc:
        r = await rolloutfleet.phases_become(proc, {"canary-1": "Baking", "prod-1": "Waiting"})
        old = proc.hub.assignment("prod-1", "podinfo")
        assert old is None or old.revision != r.revision  # its step has not started
        await proc.hub.rollback(app="podinfo", revision=r.revision, cluster="prod-1", actor="t")

        async def left_out() -> bool:
            got = await rolloutfleet.status(proc)
            return all(c.cluster != "prod-1" for c in got.clusters)

        await wait.until("prod-1 to leave the rollout while pinned", left_out)
        row = proc.hub.assignment("prod-1", "podinfo")
        assert row is not None and row.revision == r.revision and row.reason == "pin"
        await proc.hub.unpin(app="podinfo", cluster="prod-1", actor="t")
        # it runs the rollout's revision already: back in its step, tracked, not sent back
        await rolloutfleet.phases_become(proc, {"prod-1": "Baking"})
        row = proc.hub.assignment("prod-1", "podinfo")
        assert row is not None and row.revision == r.revision
