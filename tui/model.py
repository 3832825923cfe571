"""The fleet as the TUI holds it: a snapshot kept current by the hub's change stream, and the
matrix it shows (clusters x apps, worst-wins). Pure: no Textual, no gRPC calls.

Enum values come from the hub (and through it from agents): a newer hub or a lying agent can
send values this TUI does not know. They are looked up only through `sync_name()` and its
siblings, which answer "Unknown", never raise."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

from fleetops.proto import rollouttext
from fleetops.proto.v1 import fleet_pb2, types_pb2

SYNC: dict[int, str] = {
    types_pb2.SYNC_STATUS_SYNCED: "Synced",
    types_pb2.SYNC_STATUS_OUT_OF_SYNC: "OutOfSync",
    types_pb2.SYNC_STATUS_APPLYING: "Applying",
    types_pb2.SYNC_STATUS_APPLY_FAILED: "ApplyFailed",
    types_pb2.SYNC_STATUS_PENDING: "Pending",
    types_pb2.SYNC_STATUS_UNSPECIFIED: "Unknown",
}
HEALTH: dict[int, str] = {
    types_pb2.HEALTH_STATUS_HEALTHY: "Healthy",
    types_pb2.HEALTH_STATUS_PROGRESSING: "Progressing",
    types_pb2.HEALTH_STATUS_DEGRADED: "Degraded",
    types_pb2.HEALTH_STATUS_SUSPENDED: "Suspended",
    types_pb2.HEALTH_STATUS_MISSING: "Missing",
    types_pb2.HEALTH_STATUS_UNKNOWN: "Unknown",
    types_pb2.HEALTH_STATUS_UNSPECIFIED: "Unknown",
}
CONNECTIVITY: dict[int, str] = {
    types_pb2.CONNECTIVITY_CONNECTED: "Connected",
    types_pb2.CONNECTIVITY_DISCONNECTED: "Disconnected",
    types_pb2.CONNECTIVITY_NEVER_SEEN: "NeverSeen",
    types_pb2.CONNECTIVITY_UNSPECIFIED: "Unknown",
}
CAUSE: dict[int, str] = {
    types_pb2.CAUSE_UNSPECIFIED: "",
    types_pb2.CAUSE_AUTO: "auto",
    types_pb2.CAUSE_USER: "user",
    types_pb2.CAUSE_ROLLBACK: "rollback",
    types_pb2.CAUSE_ROLLOUT_GATE: "rollout",
    types_pb2.CAUSE_AGENT: "agent",
}
ROLLOUT_GATE: dict[int, str] = {
    types_pb2.ROLLOUT_GATE_UNSPECIFIED: "",
    types_pb2.ROLLOUT_GATE_WAITING: "waiting",
    types_pb2.ROLLOUT_GATE_PROGRESSING: "progressing",
    types_pb2.ROLLOUT_GATE_BAKING: "baking",
    types_pb2.ROLLOUT_GATE_DONE: "done",
    types_pb2.ROLLOUT_GATE_FAILED: "failed",
    types_pb2.ROLLOUT_GATE_DEFERRED: "deferred",
    types_pb2.ROLLOUT_GATE_HALTED: "halted",
}
UNKNOWN = "Unknown"


def sync_name(value: int) -> str:
    return SYNC.get(value, UNKNOWN)


def health_name(value: int) -> str:
    return HEALTH.get(value, UNKNOWN)


def connectivity_name(value: int) -> str:
    return CONNECTIVITY.get(value, UNKNOWN)


def cause_name(value: int) -> str:
    return CAUSE.get(value, UNKNOWN)


def rollout_gate_name(value: int) -> str:
    """'' when the cell is in no rollout; `rollout Unknown` for a value this TUI does not know."""
    return ROLLOUT_GATE.get(value, f"rollout {UNKNOWN}")


# worst wins: the level decides the colour of a cell, a row and a column
OK, WAIT, WARN, BAD = 0, 1, 2, 3
LEVEL_STYLE = {OK: "green", WAIT: "deep_sky_blue1", WARN: "dark_orange", BAD: "bold red"}


def level(cell: fleet_pb2.ClusterAppStatus) -> int:
    if (
        cell.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
        or cell.health == types_pb2.HEALTH_STATUS_DEGRADED
    ):
        return BAD
    if (
        cell.sync == types_pb2.SYNC_STATUS_OUT_OF_SYNC
        or cell.health == types_pb2.HEALTH_STATUS_MISSING
        # shown as Unknown (unset, or a value this TUI does not know): someone should look
        or sync_name(cell.sync) == UNKNOWN
        or health_name(cell.health) == UNKNOWN
    ):
        return WARN
    if cell.sync in (types_pb2.SYNC_STATUS_PENDING, types_pb2.SYNC_STATUS_APPLYING) or (
        cell.health == types_pb2.HEALTH_STATUS_PROGRESSING
    ):
        return WAIT
    return OK


def short(rev: str) -> str:
    return rev[:7] if rev else "-"


HEAD_SUBJECT_MOST = 72  # characters of a head commit's subject the app screen's header shows


def head_words(repo: fleet_pb2.RepoStatus | None, revision: str) -> str:
    """The head commit in Git's own words for a header line (` "subject" by author`), or ""
    when the repo's status does not describe that very commit."""
    if repo is None or not revision or repo.revision != revision:
        return ""
    if not repo.head_subject and not repo.head_author:
        return ""
    subject = repo.head_subject
    if len(subject) > HEAD_SUBJECT_MOST:
        subject = subject[: HEAD_SUBJECT_MOST - 1] + "…"
    return f' "{subject}"' + (f" by {repo.head_author}" if repo.head_author else "")


SYNC_SHORT = {
    "Synced": "ok",
    "OutOfSync": "OOS",
    "Applying": "apply",
    "ApplyFailed": "FAIL",
    "Pending": "pend",
    "Unknown": "?",
}
HEALTH_SHORT = {
    "Healthy": "ok",
    "Progressing": "prog",
    "Degraded": "DEGR",
    "Suspended": "susp",
    "Missing": "miss",
    "Unknown": "?",
}


def cell_text(cell: fleet_pb2.ClusterAppStatus, *, compact: bool = False) -> str:
    """`Synced Healthy a1b2c3d`, or `OutOfSync Healthy a1b2c3d→e4f5a6b` when they differ.
    Compact (narrow terminals): `ok/ok a1b2c3d`, `pend/ok →e4f5a6b`."""
    pin = "📌" if cell.pinned_revision else ""
    differs = cell.desired_revision and cell.desired_revision != cell.applied_revision
    sync, health = sync_name(cell.sync), health_name(cell.health)
    if compact:
        rev = f"→{short(cell.desired_revision)}" if differs else short(cell.applied_revision)
        return f"{SYNC_SHORT[sync]}/{HEALTH_SHORT[health]} {rev}{pin}"
    rev = short(cell.applied_revision)
    if differs:
        rev = f"{short(cell.applied_revision)}→{short(cell.desired_revision)}"
    return f"{sync} {health} {rev}{pin}"


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


DAY = 86400.0
# Agents renew at two thirds of a certificate's lifetime (90 days by default): one this close
# to its end was not renewed when it should have been.
RENEWAL_OVERDUE = 7 * DAY


def certificate_state(cluster: types_pb2.Cluster, now: float) -> tuple[str, int]:
    """What to say about the agent's certificate, and how worried to be (OK, WARN, BAD)."""
    if not cluster.HasField("certificate_expires"):
        return "certificate: none on record (an older hub, or the agent never registered)", OK
    ends = cluster.certificate_expires.seconds
    if ends <= now:
        return f"certificate EXPIRED {utc(ends)}: the agent must register with a new token", BAD
    days = int((ends - now) / DAY)
    left = "less than a day" if days < 1 else f"{days} day" + ("s" if days > 1 else "")
    return f"certificate valid until {utc(ends)} ({left} left)", (
        WARN if ends - now < RENEWAL_OVERDUE else OK
    )


def gate(
    cell: fleet_pb2.ClusterAppStatus,
    app: fleet_pb2.App | None,
    cluster: types_pb2.Cluster | None,
) -> str:
    """What decides whether this cluster gets the app's newest revision: `open` when nothing
    holds it back, else the first of pin, pause, offline agent, the app's rollout (waiting,
    progressing, baking, deferred, failed, halted, done), failed render, manual sync."""
    if cell.pinned_revision:
        return f"pinned {short(cell.pinned_revision)}"
    if app is not None and app.paused:
        return "paused"
    if cluster is not None and cluster.connectivity != types_pb2.CONNECTIVITY_CONNECTED:
        return "agent offline"
    if rolled := rollout_gate_name(cell.gate):
        return rolled
    if cell.reason.startswith("render failed"):
        return "render failed"
    if cell.reason.startswith("auto-sync is off"):
        return "manual sync"
    return "open"


# -- an app's rollout (fleet_pb2.Rollout), as the rollout screen shows it


ROLLOUT_LEVEL = {
    "Passed": OK,
    "Succeeded": OK,
    "Running": WAIT,
    "Progressing": WAIT,
    "Baking": WAIT,
    "Deferred": WARN,
    "Paused": WARN,
    "Superseded": WARN,
    "Aborted": WARN,
    "Failed": BAD,
    "Halted": BAD,
}


def rollout_level(phase: str) -> int | None:
    """How worried a rollout, step or cluster phase should make the operator (None: not at
    all yet, e.g. Waiting or Excluded, shown muted)."""
    return ROLLOUT_LEVEL.get(phase)


def rollout_cluster_state(c: fleet_pb2.RolloutCluster) -> str:
    """`Baking 4m12s left`, else the phase as the hub names it."""
    return rollouttext.cluster_state(c, unknown=UNKNOWN)


def rollout_where(r: fleet_pb2.Rollout) -> str:
    """`Running, step 2/3 prod-eu`, or `Succeeded, all 3 steps passed`."""
    if not r.revision:
        return "no rollout yet: it starts with the next commit"
    return rollouttext.where(r)


@dataclasses.dataclass
class Fleet:
    clusters: dict[str, types_pb2.Cluster] = dataclasses.field(default_factory=dict)
    apps: dict[str, fleet_pb2.App] = dataclasses.field(default_factory=dict)
    cells: dict[tuple[str, str], fleet_pb2.ClusterAppStatus] = dataclasses.field(
        default_factory=dict
    )
    repos: dict[str, fleet_pb2.RepoStatus] = dataclasses.field(default_factory=dict)
    events: list[types_pb2.Event] = dataclasses.field(default_factory=list)
    version: int = 0
    # what changed since the screen last painted: cells, or the shape (clusters, apps)
    dirty: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    shape: int = 0

    def load(self, snap: fleet_pb2.Snapshot) -> None:
        self.clusters = {c.name: c for c in snap.clusters}
        self.apps = {a.name: a for a in snap.apps}
        self.cells = {(s.cluster, s.app): s for s in snap.statuses}
        self.repos = {r.name: r for r in snap.repos}
        self.version = snap.version
        self.shape += 1

    def apply(self, change: fleet_pb2.FleetChange) -> None:
        kind = change.WhichOneof("change")
        if kind == "snapshot":
            self.load(change.snapshot)
        elif kind == "cluster":
            if change.cluster.name not in self.clusters:
                self.shape += 1
            self.clusters[change.cluster.name] = change.cluster
            self.dirty.add((change.cluster.name, ""))
        elif kind == "app":
            if (
                change.app.name not in self.apps
                or self.apps[change.app.name].paused != change.app.paused
            ):
                self.shape += 1
            self.apps[change.app.name] = change.app
        elif kind == "status":
            key = (change.status.cluster, change.status.app)
            if key not in self.cells:
                self.shape += 1
            self.cells[key] = change.status
            self.dirty.add(key)
        elif kind == "repo":
            self.repos[change.repo.name] = change.repo
        elif kind == "event":
            self.events.append(change.event)
            del self.events[:-500]
        self.version = max(self.version, change.version)

    def matches(self, cluster: str, query: str) -> bool:
        """Free text against the cluster's name, its labels (`env=prod`), its groups
        (`group=prod`), its connectivity and its cells' states. Words separated by spaces
        must all match (`group=prod Degraded`)."""
        if not query:
            return True
        c = self.clusters.get(cluster)
        words = [cluster]
        if c is not None:
            words += [f"{k}={v}" for k, v in c.labels.items()] + [connectivity_name(c.connectivity)]
            words += [f"group={g}" for g in c.groups]
        for a in self.apps:
            cell = self.cells.get((cluster, a))
            if cell is not None:
                words += [sync_name(cell.sync), health_name(cell.health)]
        lowered = [w.lower() for w in words]
        return all(any(q in w for w in lowered) for q in query.lower().split())

    def cluster_names(self, query: str = "", sort: str = "name") -> list[str]:
        names = [c for c in self.clusters if self.matches(c, query)]
        if sort == "worst":
            return sorted(names, key=lambda c: (-self.row_level(c), c))
        return sorted(names)

    def row_level(self, cluster: str) -> int:
        levels = [
            level(cell) for a in self.apps if (cell := self.cells.get((cluster, a))) is not None
        ]
        conn = self.clusters.get(cluster)
        if conn is not None and conn.connectivity != types_pb2.CONNECTIVITY_CONNECTED:
            levels.append(WARN)
        return max(levels, default=OK)

    def row_counts(self, cluster: str) -> tuple[int, int]:
        """(apps fine, apps) on one cluster."""
        cells = [c for a in self.apps if (c := self.cells.get((cluster, a))) is not None]
        return sum(1 for c in cells if level(c) == OK), len(cells)

    def counts(self, cells: Iterable[fleet_pb2.ClusterAppStatus]) -> str:
        cells = list(cells)
        good = sum(1 for c in cells if level(c) == OK)
        bad = sum(1 for c in cells if level(c) >= WARN)
        return f"{good}/{len(cells)} ok" + (f", {bad} need attention" if bad else "")
