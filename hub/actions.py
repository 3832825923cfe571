"""Operator actions: sync, rollback (pin), unpin, pause/resume, allow a mass prune, remove a
cluster. Each goes one way: validate (a clear error naming the app, cluster or revision and
what to do), write the change through the store, record the audit event with the caller's
name, then replan and tell the fleet view.

Never trusts anything the caller says about itself: `actor` is the API token's name.
"""

from __future__ import annotations

import dataclasses
import time

from fleetops.hub import (
    agentreports,
    appspecs,
    errors,
    events,
    fleetstate,
    fleetview,
    plan,
    planning,
    records,
    rendercache,
    sessions,
    storeapi,
    tracking,
)
from fleetops.proto.v1 import types_pb2


@dataclasses.dataclass(frozen=True)
class Parts:
    """What actions act on."""

    settings: fleetstate.Settings
    db: storeapi.StoreApi
    clusters: fleetstate.Clusters
    assignments: fleetstate.Assignments
    choices: fleetstate.Choices
    tracker: tracking.Tracker
    specs: appspecs.AppSpecs
    renders: rendercache.RenderCache
    recorder: events.Recorder
    planning: planning.Planning
    sessions: sessions.Sessions
    reports: agentreports.Reports
    view: fleetview.FleetView


class Actions:
    def __init__(self, parts: Parts) -> None:
        self._p = parts

    async def _done(
        self, entry: events.Entry, *, replan: bool = True, app_changed: str = ""
    ) -> records.Event:
        """The one ending of every action: recorded, replanned, shown."""
        ev = await self._p.recorder.record(entry)
        if replan:
            await self._p.planning.replan(cause=entry.cause, actor=entry.actor)
        if app_changed:
            self._p.view.app_changed(app_changed)
        return ev

    def _cluster(self, cluster: str) -> None:
        if cluster:
            self._p.clusters.require(cluster)

    async def sync(
        self, *, app: str, cluster: str, actor: str, allow_mass_prune: bool = False
    ) -> records.Event:
        """Deploy the head now (also with auto-sync off), on `cluster` or every cluster."""
        spec = self._p.settings.app(app)
        self._cluster(cluster)
        paused = self._p.choices.paused
        if spec.name in paused:
            raise errors.InvalidArgument(
                f"app {spec.name} is paused ({paused[spec.name]}); resume it first"
            )
        self._p.choices.sync_requests.add((spec.name, cluster))
        self._p.tracker.trigger_fetch(spec.repo)
        ev = await self._done(
            events.Entry(
                app=spec.name,
                cluster=cluster,
                kind="sync-requested",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                revision=self._p.tracker.heads.get(spec.repo, ""),
                message=f"sync of {spec.name} requested by {actor}",
            )
        )
        if allow_mass_prune:
            await self._allow_mass_prune(spec.name, cluster, actor)
        self._p.sessions.nudge(spec.name, cluster)
        return ev

    async def _allow_mass_prune(self, app: str, cluster: str, actor: str) -> None:
        """Let the bundle each cluster of `app` has now prune past its max_prune_percent, once:
        the allowance names the bundle, so the next commit is guarded again."""
        rows = [
            dataclasses.replace(
                row,
                allow_mass_prune=row.digest,
                generation=row.generation + 1,
                updated_at=time.time(),
            )
            for row in self._p.assignments.all()
            if row.app == app and (not cluster or row.cluster == cluster)
        ]
        if not rows:
            where = f"cluster {cluster}" if cluster else "any cluster"
            raise errors.InvalidArgument(f"app {app} is not assigned to {where}")
        await self._p.planning.write(rows)
        for row in rows:
            self._p.sessions.push_assignments(row.cluster)
        where = f"cluster {cluster}" if cluster else f"{len(rows)} clusters"
        await self._done(
            events.Entry(
                app=app,
                cluster=cluster,
                kind="mass-prune-allowed",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"{actor} allowed {app}'s current bundle to prune past its limit on "
                f"{where}",
            ),
            replan=False,
        )

    async def rollback(self, *, app: str, revision: str, cluster: str, actor: str) -> records.Event:
        """Pin `app` (on `cluster`, or everywhere) to `revision`, once it renders for every
        target it would use; auto-sync holds until unpinned."""
        spec = self._p.specs.effective(self._p.settings.app(app))
        self._cluster(cluster)
        full = await self._p.tracker.resolve(spec.repo, revision)
        cfg = self._p.settings.cfg
        targets = {t.name: t for t in (spec.targets or (plan.DEFAULT_TARGET,))}
        for c in [cluster] if cluster else self._p.clusters.names():
            t = plan.target_for(cfg, spec, c, self._p.clusters.labels_of(cfg, c))
            if t is not None:
                targets[t.name] = t
        for t in targets.values():
            result = await self._p.renders.bundle_for(spec, t, full)
            if result.error:
                raise errors.InvalidArgument(
                    f"app {spec.name} does not render at {full[:12]} for target {t.name}: "
                    f"{result.error}"
                )
        previous = self._p.choices.pins.get((spec.name, cluster), "")
        await self._p.db.run(
            self._p.db.put_pin,
            records.Pin(app=spec.name, cluster=cluster, revision=full, actor=actor, at=time.time()),
        )
        self._p.choices.pins[(spec.name, cluster)] = full
        where = f"cluster {cluster}" if cluster else "every cluster"
        return await self._done(
            events.Entry(
                app=spec.name,
                cluster=cluster,
                kind="pinned",
                cause=types_pb2.CAUSE_ROLLBACK,
                actor=actor,
                revision=full,
                previous_revision=previous,
                message=f"{spec.name} pinned to {full[:8]} on {where} by {actor}; "
                "auto-sync holds until unpinned",
            ),
            app_changed=spec.name,
        )

    async def unpin(self, *, app: str, cluster: str, actor: str) -> records.Event:
        spec = self._p.settings.app(app)
        previous = self._p.choices.pins.get((spec.name, cluster))
        if previous is None:
            where = f" on cluster {cluster}" if cluster else ""
            raise errors.InvalidArgument(f"app {spec.name} is not pinned{where}")
        await self._p.db.run(self._p.db.delete_pin, app=spec.name, cluster=cluster)
        self._p.choices.pins.pop((spec.name, cluster), None)
        return await self._done(
            events.Entry(
                app=spec.name,
                cluster=cluster,
                kind="unpinned",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                previous_revision=previous,
                message=f"{spec.name} unpinned by {actor}; auto-sync resumes",
            ),
            app_changed=spec.name,
        )

    async def pause(self, *, app: str, reason: str, actor: str, paused: bool) -> records.Event:
        """Pause (every cluster keeps its revision) or resume an app."""
        spec = self._p.settings.app(app)
        await self._p.db.run(
            self._p.db.put_app_state, records.AppState(app=spec.name, paused=paused, reason=reason)
        )
        if paused:
            self._p.choices.paused[spec.name] = reason or f"paused by {actor}"
        else:
            self._p.choices.paused.pop(spec.name, None)
        return await self._done(
            events.Entry(
                app=spec.name,
                kind="paused" if paused else "resumed",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"{spec.name} {'paused' if paused else 'resumed'} by {actor}"
                + (f": {reason}" if reason else ""),
            ),
            app_changed=spec.name,
        )

    async def remove_cluster(self, *, cluster: str, actor: str) -> records.Event:
        """Forget a cluster: its certificate stops working at once, its stream ends, its
        assignments go (the agent keeps what runs) and history says who removed it."""
        self._p.clusters.require(cluster)
        await self._p.db.run(self._p.db.remove_cluster, cluster)
        self._p.clusters.rows.pop(cluster, None)
        self._p.assignments.drop_cluster(cluster)
        self._p.reports.forget_cluster(cluster)
        for key in [k for k in self._p.choices.pins if k[1] == cluster]:
            self._p.choices.pins.pop(key, None)
        self._p.sessions.end(cluster, f"cluster {cluster} was removed", forget=True)
        ev = await self._done(
            events.Entry(
                cluster=cluster,
                kind="cluster-removed",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"cluster {cluster} removed by {actor}; its certificate is revoked and "
                "its agent keeps what runs (delete it from the cluster too)",
            ),
            replan=False,
        )
        self._p.view.everything_changed()
        return ev
