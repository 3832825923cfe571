"""The hub, composed: the parts that each do one job (tracking, rendercache, appspecs,
planning around the pure planner, sessions, agentreports, actions, enrollment, fleetview,
events, retention), wired together through the small state holders of hub.fleetstate.

`Hub` is what the gRPC servicers call: it implements `agent_service.AgentHub` and
`fleet_service.FleetHub`, each a narrow Protocol, and nothing else reaches into its parts.
It loads the working set from the store at start; every part writes each change through the
store before it is announced, so a restart loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import datetime
import pathlib
import time
from collections.abc import Callable

from fleetops.hub import (
    actions,
    agentreports,
    apitokens,
    appspecs,
    ca,
    charts,
    config,
    enrollment,
    errors,
    events,
    fleetstate,
    fleetview,
    images,
    imagestatus,
    planning,
    records,
    render,
    rendercache,
    retention,
    rollouts,
    rolloutview,
    sessions,
    status,
    storeapi,
    tracking,
)
from fleetops.proto import supervise
from fleetops.proto.v1 import agent_pb2, fleet_pb2, types_pb2

MAX_MESSAGE = 16 * 1024 * 1024  # gRPC message limit, set explicitly on hub and agent channels


class Hub:
    def __init__(
        self,
        *,
        cfg: config.Config,
        db: storeapi.StoreApi,
        data: pathlib.Path,
        tools: render.Tools,
        authority: ca.CA,
        registry: apitokens.Registry,
        cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
        now: Callable[[], float] = time.time,
        reconnect_grace: float = rollouts.OFFLINE_GRACE,
    ) -> None:
        self.db = db
        self.data = data
        self._settings = fleetstate.Settings(cfg)
        self._registry = registry
        self._bus = events.Bus()
        self._recorder = events.Recorder(db=db, bus=self._bus)
        self._clusters = fleetstate.Clusters()
        self.assignments = fleetstate.Assignments()
        self._choices = fleetstate.Choices()
        self._tracker = tracking.Tracker(
            settings=self._settings,
            db=db,
            bus=self._bus,
            data=data,
            on_revision=self.replan,
            on_unchanged=self._charts_due,
        )
        self._renders = rendercache.RenderCache(
            db=db,
            tools=tools,
            repos=self._tracker.repos,
            charts=charts.Charts(root=data / "charts", tools=tools),
            helm_repositories=lambda: self._settings.cfg.helm_repositories,
        )
        self._specs = appspecs.AppSpecs(settings=self._settings, repos=self._tracker.repos)
        self._reports = agentreports.Reports(
            db=db,
            assignments=self.assignments,
            recorder=self._recorder,
            announce=lambda cluster, app: self._view.cell_changed(cluster, app),
        )
        self._rollouts = rollouts.Rollouts(
            settings=self._settings,
            db=db,
            clusters=self._clusters,
            assignments=self.assignments,
            reports=self._reports.latest,
            recorder=self._recorder,
            connected=lambda cluster: self._sessions.connected(cluster),
            replan=lambda: self._planning.replan(),
            announce=lambda cluster, app: self._view.cell_changed(cluster, app),
            pinned=self._choices.pin_of,
            frozen=self._frozen,
            now=now,
            offline_grace=reconnect_grace,
        )
        self._view = fleetview.FleetView(
            settings=self._settings,
            clusters=self._clusters,
            assignments=self.assignments,
            choices=self._choices,
            heads=self._tracker.heads,
            repo_status=self._tracker.status,
            specs=self._specs,
            renders=self._renders,
            reports=self._reports.latest,
            connected=lambda cluster: self._sessions.connected(cluster),
            bus=self._bus,
            gate_of=lambda cluster, app: rolloutview.cell_gate(
                self._rollouts.book(app), cluster=cluster, now=self._rollouts.now()
            ),
        )
        self._sessions = sessions.Sessions(
            settings=self._settings,
            db=db,
            clusters=self._clusters,
            assignments=self.assignments,
            renders=self._renders,
            view=self._view,
            replan=lambda cluster: self._planning.replan(clusters=[cluster]),
            take_report=self._took_hello_report,
        )
        self._planning = planning.Planning(
            settings=self._settings,
            db=db,
            clusters=self._clusters,
            assignments=self.assignments,
            choices=self._choices,
            heads=self._tracker.heads,
            specs=self._specs,
            renders=self._renders,
            recorder=self._recorder,
            rollouts=self._rollouts,
            deliver=self._sessions.push_assignments,
            announce=self._view.cells_changed,
        )
        self._enrollment = enrollment.Enrollment(
            db=db,
            authority=authority,
            clusters=self._clusters,
            recorder=self._recorder,
            on_registered=self._registered,
            on_renewed=self._view.cluster_changed,
            now=now,
            cert_lifetime=cert_lifetime,
        )
        self._actions = actions.Actions(
            actions.Parts(
                settings=self._settings,
                db=db,
                clusters=self._clusters,
                assignments=self.assignments,
                choices=self._choices,
                tracker=self._tracker,
                specs=self._specs,
                renders=self._renders,
                recorder=self._recorder,
                planning=self._planning,
                sessions=self._sessions,
                reports=self._reports,
                view=self._view,
            )
        )
        self._images = images.Images(
            settings=self._settings,
            db=db,
            data=data,
            recorder=self._recorder,
            rejected=self._rejected_in_repo,
            heads=lambda: self._tracker.heads,
            trigger_fetch=self.trigger_fetch,
            now=now,
        )
        self._retention = retention.Retention(
            settings=self._settings, db=db, renders=self._renders, flush=self._reports.flush
        )

    # ------------------------------------------------------------ start-up and config

    async def load(self) -> None:
        """The working set from the store."""
        db = self.db
        clusters, assignments = await db.run(lambda: (db.clusters(), db.assignments()))
        for c in clusters:
            cluster = fleetstate.Cluster.from_record(c)
            cluster.connected = False  # nobody is connected to a process that just started
            self._clusters.put(cluster)
        for a in assignments:
            self.assignments.set(fleetstate.Assignment.from_record(a))
        self._reports.load(await db.run(db.reports))
        self._tracker.load(await db.run(db.repos))
        for p in await db.run(db.pins):
            self._choices.pins[(p.app, p.cluster)] = p.revision
        for st in await db.run(db.app_states):
            if st.paused:
                self._choices.paused[st.app] = st.reason
        self._renders.load(await db.run(db.renders))
        self._rollouts.load(await db.run(db.rollouts))
        await self._images.load()

    async def apply_config(self, cfg: config.Config) -> None:
        """A new, valid hub.yaml: new repos fetch at once, and everything is re-planned."""
        self._settings.cfg = cfg
        self._settings.error = ""
        self._tracker.sync_repos()
        self._tracker.fetch_all()
        await self.replan()

    def config_refused(self, why: str) -> None:
        """A hub.yaml reload failed: the last good config keeps running, and says why."""
        self._settings.error = why

    async def replan(self) -> set[str]:
        """Plan the whole fleet again (a head moved, hub.yaml changed)."""
        return await self._planning.replan()

    async def _charts_due(self) -> None:
        """A repo poll found no new commit: plan again when a chart version range is due to
        be resolved again, so a new upstream version in range is picked up."""
        if self._renders.charts_due():
            await self.replan()
            self._renders.forget_due_charts()

    async def _took_hello_report(self, cluster: str, report: types_pb2.AppReport) -> None:
        """A report in a connecting agent's hello: taken, and news for its app's rollout."""
        await self._reports.take(cluster, report, announce=False)
        self._rollouts.took_report(cluster, report.app)

    def _frozen(self, app: str) -> str:
        """Why nobody can be given a new revision of `app` now ('' when they can)."""
        if app in self._choices.paused:
            return f"the app is paused ({self._choices.paused[app] or 'no reason given'})"
        if app in self._specs.errors:
            return "its fleet.yaml does not read at the head"
        return ""

    def _rejected_in_repo(self, repo: str) -> set[str]:
        """The revisions of `repo` that a rollout of one of its apps rejected."""
        out: set[str] = set()
        for app in self._settings.cfg.apps:
            book = self._rollouts.book(app.name) if app.repo == repo else None
            if book is not None:
                out.update(book.rejected)
        return out

    def _registered(self, cluster: str) -> None:
        self._view.cluster_changed(cluster)
        self._sessions.end(
            cluster, "the cluster registered again; a stream on the old certificate ends"
        )

    # ------------------------------------------------------------ supervised loops

    def trigger_fetch(self, repo_name: str) -> bool:
        return self._tracker.trigger_fetch(repo_name)

    async def poll(self, repo_name: str, stop: asyncio.Event) -> None:
        await self._tracker.poll(repo_name, stop)

    async def watch_streams(self, stop: asyncio.Event, *, every: float = 5.0) -> None:
        await self._sessions.watch_streams(stop, every=every)

    async def retain(self, stop: asyncio.Event, *, every: float = 3600.0) -> None:
        await self._retention.retain(stop, every=every)

    async def run_rollouts(self, stop: asyncio.Event) -> None:
        await self._rollouts.run(stop)

    async def run_images(self, stop: asyncio.Event) -> None:
        await self._images.run(stop)

    def image_status(self) -> imagestatus.Status:
        return self._images.status()

    def scan_images(self, repository: str = "") -> list[str]:
        """Scan `repository` (every one when '') now; the names that will be scanned."""
        return self._images.scan_now(repository)

    async def flush_reports(self) -> None:
        await self._reports.flush()

    # ------------------------------------------------------------ AgentHub

    async def register(
        self, *, token: str, csr_pem: bytes, facts: dict[str, str]
    ) -> enrollment.Certificate:
        return await self._enrollment.register(token=token, csr_pem=csr_pem, facts=facts)

    async def renew(
        self, *, cluster: str, presented: str, csr_pem: bytes
    ) -> enrollment.Certificate:
        return await self._enrollment.renew(cluster=cluster, presented=presented, csr_pem=csr_pem)

    def accepts(self, cluster: str, fingerprint: str) -> bool:
        return self._enrollment.accepts(cluster, fingerprint)

    def certificate_ok(self, cluster: str, fingerprint: str) -> bool:
        return self._enrollment.certificate_ok(cluster, fingerprint)

    async def connect(self, cluster: str, hello: agent_pb2.Hello) -> sessions.Stream:
        return await self._sessions.connect(cluster, hello)

    async def heard(self, cluster: str, msg: agent_pb2.AgentMessage) -> None:
        """A message on the cluster's stream: it is alive, and what it reports is taken."""
        self._sessions.seen(cluster)
        if msg.HasField("report"):
            app = msg.report.app
            if app and self.assignments.get(cluster, app) is None and self.cfg.app(app) is None:
                return  # a report for an app the hub no longer knows
            await self._reports.take(cluster, msg.report)
            self._rollouts.took_report(cluster, app)
        elif msg.HasField("hello"):
            for r in msg.hello.reports:
                await self._reports.take(cluster, r)
                self._rollouts.took_report(cluster, r.app)

    async def disconnect(self, stream: sessions.Stream, reason: str) -> None:
        await self._sessions.disconnect(stream, reason)

    async def bundle(self, cluster: str, digest: str) -> bytes:
        """A bundle's bytes, for an agent whose cluster is assigned it."""
        if not self._sessions.may_read_bundle(cluster, digest):
            raise errors.PermissionDenied(
                f"bundle {digest[:12]} is not assigned to cluster {cluster}"
            )
        return await self._renders.bundle_bytes(digest)

    def assignments_for(self, cluster: str) -> agent_pb2.Assignments:
        return self._sessions.assignments_for(cluster)

    # ------------------------------------------------------------ FleetHub

    def actor(self, bearer: str) -> str:
        """The audit actor of a fleet API call: its token's name (the interceptor has
        already refused unknown tokens; this one may have been revoked since)."""
        found = self._registry.resolve(bearer)
        if found is None:
            raise errors.Unauthenticated("the fleet API token is unknown, revoked or expired")
        return found.name

    async def create_registration_token(
        self, *, cluster: str, labels: dict[str, str], ttl: int, actor: str
    ) -> enrollment.Token:
        return await self._enrollment.create_token(
            cluster=cluster, labels=labels, ttl=ttl, actor=actor
        )

    async def create_api_token(
        self, *, name: str, role: str, ttl: float, actor: str
    ) -> tuple[str, records.ApiToken]:
        secret, record = await self._registry.create(
            name=name, role=role, ttl=ttl, created_by=actor
        )
        until = f", valid until {status.since(record.expires_at)}" if record.expires_at else ""
        await self._recorder.record(
            events.Entry(
                kind="api-token-created",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"{record.role} API token {record.name!r} created by {actor}{until}",
            )
        )
        return secret, record

    def api_tokens(self) -> list[records.ApiToken]:
        return self._registry.list()

    async def revoke_api_token(self, *, name: str, actor: str) -> records.Event:
        await self._registry.revoke(name)
        return await self._recorder.record(
            events.Entry(
                kind="api-token-revoked",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"API token {name!r} revoked by {actor}",
            )
        )

    def snapshot(self) -> fleet_pb2.Snapshot:
        return self._view.snapshot()

    def subscribe(self) -> events.Subscription:
        return self._bus.subscribe()

    async def sync(
        self, *, app: str, cluster: str, actor: str, allow_mass_prune: bool = False
    ) -> records.Event:
        return await self._actions.sync(
            app=app, cluster=cluster, actor=actor, allow_mass_prune=allow_mass_prune
        )

    async def rollback(self, *, app: str, revision: str, cluster: str, actor: str) -> records.Event:
        return await self._actions.rollback(
            app=app, revision=revision, cluster=cluster, actor=actor
        )

    async def unpin(self, *, app: str, cluster: str, actor: str) -> records.Event:
        return await self._actions.unpin(app=app, cluster=cluster, actor=actor)

    async def pause(self, *, app: str, reason: str, actor: str, paused: bool) -> records.Event:
        return await self._actions.pause(app=app, reason=reason, actor=actor, paused=paused)

    async def remove_cluster(self, *, cluster: str, actor: str) -> records.Event:
        return await self._actions.remove_cluster(cluster=cluster, actor=actor)

    async def history(self, *, app: str, cluster: str, limit: int) -> list[records.Event]:
        return await self._retention.history(app=app, cluster=cluster, limit=limit)

    def rollout_status(self, *, app: str) -> list[fleet_pb2.Rollout]:
        """The newest rollout of `app`, or of every app with a rollout policy ('')."""
        cfg = self._settings.cfg
        apps = [self._settings.app(app)] if app else [a for a in cfg.apps if a.rollout]
        gates = {g.name: g for g in cfg.gates}
        out = []
        for a in apps:
            if a.rollout is None:
                raise errors.FailedPrecondition(
                    f"app {a.name} has no rollout policy: every cluster takes a new revision at "
                    f"once; add rollout: {{steps: [...]}} to it in {cfg.file}"
                )
            got = rolloutview.rollout_pb(
                a, self._rollouts.book(a.name), gates=gates, now=self._rollouts.now()
            )
            repo = self._tracker.status.get(a.repo)
            if repo is not None and got.revision and repo.revision == got.revision:
                got.subject, got.author = repo.head_subject, repo.head_author
            out.append(got)
        return out

    async def rollout_action(self, *, app: str, action: str, actor: str) -> records.Event:
        spec = self._settings.app(app)
        if spec.rollout is None:
            raise errors.FailedPrecondition(
                f"app {app} has no rollout policy; add rollout: {{steps: [...]}} to it in "
                f"{self._settings.cfg.file}"
            )
        return await self._rollouts.control(app=spec, action=action, actor=actor)

    # ------------------------------------------------------------ read-outs (metrics, tests)

    @property
    def cfg(self) -> config.Config:
        return self._settings.cfg

    @property
    def config_error(self) -> str:
        return self._settings.error

    @property
    def heads(self) -> dict[str, str]:
        return self._tracker.heads

    @property
    def repo_status(self) -> dict[str, fleet_pb2.RepoStatus]:
        return self._tracker.status

    @property
    def pins(self) -> dict[tuple[str, str], str]:
        return self._choices.pins

    @property
    def paused(self) -> dict[str, str]:
        return self._choices.paused

    @property
    def streams(self) -> dict[str, sessions.Stream]:
        return self._sessions.streams

    @property
    def clusters(self) -> dict[str, fleetstate.Cluster]:
        return self._clusters.rows

    @property
    def reports(self) -> dict[tuple[str, str], types_pb2.AppReport]:
        return self._reports.latest

    @property
    def dropped_reports(self) -> int:
        return self._reports.dropped

    @property
    def watchers(self) -> set[events.Subscription]:
        return self._bus.subscribers

    def _announce(self, change: fleet_pb2.FleetChange) -> None:
        self._bus.publish(change)

    @property
    def supervisor(self) -> supervise.Supervisor | None:
        return self._view.supervisor

    @supervisor.setter
    def supervisor(self, value: supervise.Supervisor | None) -> None:
        self._view.supervisor = value

    def cell(self, cluster: str, app: config.App) -> fleet_pb2.ClusterAppStatus | None:
        return self._view.cell(cluster, app)

    def cluster_pb(self, name: str) -> types_pb2.Cluster:
        return self._view.cluster_pb(name)

    def assignment(self, cluster: str, app: str) -> fleetstate.Assignment | None:
        return self.assignments.get(cluster, app)
