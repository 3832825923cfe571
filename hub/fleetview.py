"""The fleet as the fleet API shows it: the snapshot (clusters, apps, the cluster x app matrix
of cells, repos, the hub's own tasks), and the changes to it published on the event bus.

Read only: it never changes the working set, it reads it and turns it into protobuf. Each
cell comes from the pure `status.cell`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from fleetops.hub import (
    appspecs,
    config,
    events,
    fleetstate,
    plan,
    rendercache,
    status,
)
from fleetops.proto import supervise
from fleetops.proto.v1 import fleet_pb2, types_pb2


class FleetView:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        clusters: fleetstate.Clusters,
        assignments: fleetstate.Assignments,
        choices: fleetstate.Choices,
        heads: Mapping[str, str],
        repo_status: Mapping[str, fleet_pb2.RepoStatus],
        specs: appspecs.AppSpecs,
        renders: rendercache.RenderCache,
        reports: Mapping[tuple[str, str], types_pb2.AppReport],
        connected: Callable[[str], bool],
        bus: events.Bus,
        gate_of: Callable[[str, str], tuple[types_pb2.RolloutGate.ValueType, str]] = (
            lambda cluster, app: (types_pb2.ROLLOUT_GATE_UNSPECIFIED, "")
        ),
    ) -> None:
        self._settings = settings
        self._gate_of = gate_of  # (cluster, app) -> where it stands in the app's rollout
        self._clusters = clusters
        self._assignments = assignments
        self._choices = choices
        self._heads = heads
        self._repo_status = repo_status
        self._specs = specs
        self._renders = renders
        self._reports = reports
        self._connected = connected
        self._bus = bus
        self.supervisor: supervise.Supervisor | None = None  # set by the server that runs it

    # ------------------------------------------------------------ messages

    def cluster_pb(self, name: str) -> types_pb2.Cluster:
        row = self._clusters.rows[name]
        cfg = self._settings.cfg
        labels = self._clusters.labels_of(cfg, name)
        c = types_pb2.Cluster(
            name=name,
            labels=labels,
            agent_facts=row.facts,
            agent_version=row.agent_version,
            kubernetes_version=row.kubernetes_version,
            groups=[g.name for g in cfg.cluster_groups if g.selector.matches(labels)],
        )
        if row.last_seen:
            c.last_seen.FromNanoseconds(int(row.last_seen * 1e9))
        if row.cert_expires:
            c.certificate_expires.FromNanoseconds(int(row.cert_expires * 1e9))
        if self._connected(name):
            c.connectivity = types_pb2.CONNECTIVITY_CONNECTED
        elif row.last_seen:
            c.connectivity = types_pb2.CONNECTIVITY_DISCONNECTED
            c.reason = f"disconnected since {status.since(row.last_seen)}" + (
                f": {row.reason}" if row.reason else ""
            )
        else:
            c.connectivity = types_pb2.CONNECTIVITY_NEVER_SEEN
            c.reason = "registered, the agent never connected"
        return c

    def app_pb(self, configured: config.App) -> fleet_pb2.App:
        app = self._specs.effective(configured)
        head = self._heads.get(app.repo, "")
        out = fleet_pb2.App(
            name=app.name,
            repo=app.repo,
            path=app.path,
            namespace=app.namespace,
            policy=types_pb2.SyncPolicy(**dataclasses.asdict(app.sync)),
            head_revision=head,
            pinned_revision=self._choices.pins.get((app.name, ""), ""),
            paused=app.name in self._choices.paused,
        )
        for t in app.targets if app.targets is not None else (plan.DEFAULT_TARGET,):
            r = self._renders.known(app, t, head)
            out.targets.add(
                name=t.name,
                revision=head if r else "",
                bundle_digest=r.digest if r else "",
                render_error=r.error if r else "",
            )
        if app.name in self._specs.errors:
            out.targets.add(name="fleet.yaml", render_error=self._specs.errors[app.name])
        return out

    def cell(self, cluster: str, app: config.App) -> fleet_pb2.ClusterAppStatus | None:
        """(cluster, app) in the matrix, or None: the app does not target the cluster."""
        cfg = self._settings.cfg
        eff = self._specs.effective(app)
        target = plan.target_for(cfg, eff, cluster, self._clusters.labels_of(cfg, cluster))
        if target is None:
            return None
        row = self._clusters.row(cluster)
        head = self._heads.get(app.repo, "")
        render_result = self._renders.known(eff, target, head)
        render_error = (
            self._specs.errors.get(app.name)
            or self._assignments.errors.get((app.name, cluster))
            or (render_result.error if render_result else "")
        )
        out = status.cell(
            cluster=cluster,
            app=app.name,
            target=target.name,
            assignment=self._assignments.get(cluster, app.name),
            report=self._reports.get((cluster, app.name)),
            connected=self._connected(cluster),
            last_seen=row.last_seen if row is not None else 0.0,
            render_error=render_error,
            wanted_revision=head,
            auto_sync=eff.sync.auto,
        )
        out.pinned_revision = self._choices.pin_of(app.name, cluster)
        out.gate, why = self._gate_of(cluster, app.name)
        if out.gate in (types_pb2.ROLLOUT_GATE_WAITING, types_pb2.ROLLOUT_GATE_DEFERRED):
            if not out.desired_bundle:  # nothing assigned: it waits for its step
                out.desired_revision = ""
            if out.desired_revision != head:
                out.reason = f"rollout of {status.short(head)}: {why or 'waiting for its step'}"
        return out

    def snapshot(self) -> fleet_pb2.Snapshot:
        cfg = self._settings.cfg
        snap = fleet_pb2.Snapshot(version=self._bus.version)
        names = self._clusters.names()
        snap.clusters.extend(self.cluster_pb(c) for c in names)
        snap.apps.extend(self.app_pb(a) for a in cfg.apps)
        for c in names:
            for a in cfg.apps:
                cell = self.cell(c, a)
                if cell is not None:
                    snap.statuses.append(cell)
        snap.repos.extend(
            self._repo_status[r.name] for r in cfg.repos if r.name in self._repo_status
        )
        states = self.supervisor.states.values() if self.supervisor else []
        for t in sorted(states, key=_name):
            task = snap.tasks.add(
                name=t.name, running=t.running, restarts=t.restarts, last_error=t.last_error
            )
            if t.last_error_at:
                task.last_error_at.FromNanoseconds(int(t.last_error_at * 1e9))
        return snap

    # ------------------------------------------------------------ changes

    def cell_changed(self, cluster: str, app_name: str) -> None:
        app = self._settings.cfg.app(app_name)
        if app is None or not self._bus.subscribers:
            return
        cell = self.cell(cluster, app)
        if cell is not None:
            self._bus.publish(fleet_pb2.FleetChange(status=cell))

    def cells_changed(self, cluster: str) -> None:
        """Every cell of the cluster's row."""
        for app in self._settings.cfg.apps:
            self.cell_changed(cluster, app.name)

    def cluster_changed(self, cluster: str) -> None:
        self._bus.publish(fleet_pb2.FleetChange(cluster=self.cluster_pb(cluster)))

    def app_changed(self, name: str) -> None:
        """An operator pinned or paused an app: its header and every cell read differently."""
        app = self._settings.cfg.app(name)
        if app is None or not self._bus.subscribers:
            return
        self._bus.publish(fleet_pb2.FleetChange(app=self.app_pb(app)))
        for cluster in self._clusters.names():
            self.cell_changed(cluster, name)

    def everything_changed(self) -> None:
        self._bus.publish(fleet_pb2.FleetChange(snapshot=self.snapshot()))


def _name(t: supervise.TaskState) -> str:
    return t.name
