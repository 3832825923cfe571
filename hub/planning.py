"""Planning's I/O shell around the pure `planner.decide`: read fleet.yaml, render what the
decision needs, write the changed assignments in one transaction, record their history, and
hand each changed cluster to `deliver` (the agent sessions) and `announce` (the fleet view).

A render still running or failing keeps what the cluster has; an error while planning one
(app, cluster) is that pair's error, never the fleet's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from fleetops.hub import (
    appspecs,
    config,
    events,
    fleetstate,
    planner,
    rendercache,
    rollouts,
    status,
    storeapi,
)
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")


class Planning:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        db: storeapi.StoreApi,
        clusters: fleetstate.Clusters,
        assignments: fleetstate.Assignments,
        choices: fleetstate.Choices,
        heads: Mapping[str, str],
        specs: appspecs.AppSpecs,
        renders: rendercache.RenderCache,
        recorder: events.Recorder,
        rollouts: rollouts.Rollouts | None = None,
        deliver: Callable[[str], None],
        announce: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._db = db
        self._clusters = clusters
        self._assignments = assignments
        self._choices = choices
        self._heads = heads
        self._specs = specs
        self._renders = renders
        self._recorder = recorder
        self._rollouts = rollouts
        self._deliver = deliver
        self._announce = announce
        self._lock = asyncio.Lock()
        self._late: asyncio.Future[None] | None = None

    def _facts(self, scope: Iterable[str]) -> dict[str, dict[str, str]]:
        return {c: self._clusters.registered_labels(c) for c in scope if c in self._clusters}

    async def replan(
        self,
        *,
        cause: int = types_pb2.CAUSE_AUTO,
        actor: str = "auto",
        clusters: Iterable[str] | None = None,
    ) -> set[str]:
        """Recompute assignments (for every cluster, or just `clusters`), write the changed
        ones in one transaction, record events, and push each changed cluster its set.
        Returns the clusters that were pushed."""
        started = time.perf_counter()
        # one consistent view of Git for the whole pass: a fetch landing meanwhile triggers
        # its own pass
        heads = dict(self._heads)
        await self._specs.read(heads)
        cfg = self._settings.cfg
        if clusters is None:
            scope = self._clusters.names()
        else:  # one connecting agent must not cost a pass over the whole fleet
            scope = sorted(c for c in set(clusters) if c in self._clusters)
        held = set(self._specs.errors)
        await self._renders.prerender(
            planner.renders_wanted(
                cfg=cfg,
                apps=self._specs.apps(),
                clusters=self._facts(scope),
                heads=heads,
                paused=set(self._choices.paused),
                held=held,
            ),
            on_late=self._render_landed,
        )
        async with self._lock:
            cfg = self._settings.cfg
            facts = self._facts(scope)  # less those removed meanwhile
            scope = sorted(facts)
            apps = self._specs.apps()
            gatekeeping = None
            if self._rollouts is not None:
                await self._rollouts.prepare(apps=apps, heads=heads)
                gatekeeping = self._rollouts.gatekeeping()
            decision = planner.decide(
                cfg=cfg,
                apps=apps,
                clusters=facts,
                heads=heads,
                pins=dict(self._choices.pins),
                paused=set(self._choices.paused),
                current={(c, a): row.revision for c in scope for a, row in self._of(c).items()},
                sync_requests=set(self._choices.sync_requests),
                held=set(self._specs.errors),
                rollouts=gatekeeping,
            )
            changed: set[str] = set()
            rows: list[fleetstate.Assignment] = []
            entries: list[events.Entry] = []
            for app in apps:
                for cluster in scope:
                    key = (app.name, cluster)
                    if key in decision.failed:
                        self._assignments.errors[key] = decision.failed[key]
                        continue
                    try:
                        planned = await self._plan_one(
                            app, cluster, decision.get(app.name, cluster), cause, actor
                        )
                    except Exception as e:  # that (app, cluster) keeps what it has
                        log.exception("app %s cluster %s: planning failed", app.name, cluster)
                        self._assignments.errors[key] = status.unexpected("planning", e)
                        continue
                    self._assignments.errors.pop(key, None)
                    if planned is None:
                        continue
                    row, entry = planned
                    changed.add(cluster)
                    if row is not None:
                        rows.append(row)
                    if entry is not None:
                        entries.append(entry)
            gone = [(c, a) for c in scope for a in self._of(c) if cfg.app(a) is None]
            for c, a in gone:
                await self._drop(c, a)
                changed.add(c)
                entries.append(
                    events.Entry(
                        app=a,
                        cluster=c,
                        kind="unassigned",
                        cause=cause,
                        actor=actor,
                        message=f"app {a} left hub.yaml; the agent stops managing it",
                    )
                )
            await self.write(rows)
            if clusters is None:
                self._choices.sync_requests.clear()
            await self._recorder.record_all(entries)
            await self._renders.load_inline(
                row.digest for c in changed for row in self._of(c).values()
            )
            for cluster in changed:
                self._deliver(cluster)
                self._announce(cluster)
            if clusters is None and changed:
                log.info(
                    "planned: %d clusters got new assignments in %.2f s",
                    len(changed),
                    time.perf_counter() - started,
                )
            return changed

    def _of(self, cluster: str) -> dict[str, fleetstate.Assignment]:
        return self._assignments.of(cluster)

    async def write(self, rows: list[fleetstate.Assignment]) -> None:
        """Store these assignments (one transaction), then believe them."""
        await self._db.run(self._db.put_assignments, [r.record() for r in rows])
        for row in rows:
            self._assignments.set(row)

    def _render_landed(self) -> None:
        if self._late is not None:
            return

        async def again() -> None:
            try:
                await self.replan()
            except Exception:
                log.exception("planning after a late render failed")
            finally:
                self._late = None

        self._late = asyncio.ensure_future(again())

    async def _plan_one(
        self,
        app: config.App,
        cluster: str,
        desired: planner.Desired | None,
        cause: int,
        actor: str,
    ) -> tuple[fleetstate.Assignment | None, events.Entry | None] | None:
        """(the new assignment to write, the entry to record), or None: nothing changes."""
        cur = self._assignments.get(cluster, app.name)
        if desired is None:
            if cur is None:
                return None  # not targeted, or nothing to run yet
            await self._drop(cluster, app.name)
            return None, events.Entry(
                app=app.name,
                cluster=cluster,
                kind="unassigned",
                cause=cause,
                actor=actor,
                previous_revision=cur.revision,
                message=f"no target of app {app.name} matches cluster {cluster} any more",
            )
        target = desired.target
        if self._renders.busy(app, target, desired.revision):
            return None  # still rendering: keep what runs, the render's end plans again
        result = await self._renders.bundle_for(app, target, desired.revision)
        if result.error:
            return None  # the cluster keeps what it has; the error shows on the target
        row = fleetstate.Assignment(
            cluster=cluster,
            app=app.name,
            target=target.name,
            revision=desired.revision,
            digest=result.digest,
            namespace=app.namespace,
            policy=dataclasses.asdict(app.sync),  # SyncPolicy's field names
            paused=desired.paused,
            reason=desired.why,
            allow_mass_prune=cur.allow_mass_prune
            if cur is not None and cur.digest == result.digest
            else "",
        )
        if cur is not None and cur.same_delivery(row):
            return None
        row = dataclasses.replace(
            row, generation=(cur.generation if cur else 0) + 1, updated_at=time.time()
        )
        if cur is not None and cur.revision == row.revision and cur.digest == row.digest:
            return row, None  # only the policy or pause flag changed: no history entry
        chart = self._renders.chart_of(app)  # a chart from a repository: its version, digest
        why = {
            "pin": types_pb2.CAUSE_ROLLBACK,
            "sync": types_pb2.CAUSE_USER,
            "revert": types_pb2.CAUSE_ROLLOUT_GATE,
        }.get(desired.why, cause)
        return row, events.Entry(
            app=app.name,
            cluster=cluster,
            kind="assigned",
            cause=why,
            actor={"auto": "auto", "revert": "rollout"}.get(desired.why, actor),
            revision=desired.revision,
            previous_revision=cur.revision if cur else "",
            message=f"{status.short(desired.revision)} ({target.name}) assigned to {cluster}"
            + (" (pinned)" if desired.why == "pin" else "")
            + (" (reverted by the rollout)" if desired.why == "revert" else "")
            + (" (rollout)" if desired.why == "auto" and app.rollout is not None else "")
            + (f", {chart}" if chart else ""),
        )

    async def _drop(self, cluster: str, app: str) -> None:
        await self._db.run(self._db.delete_assignment, cluster=cluster, app=app)
        self._assignments.drop(cluster, app)
