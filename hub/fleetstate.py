"""The hub's working set in memory, in small holders, so that each part of the hub is handed
only what it reads or writes: the config in force, the registered clusters, the assignments,
and the operator's choices (pins, pauses, sync requests).

Plain state, no I/O, and no import of the store (the pure planner and status read these):
whoever changes a holder has written the change through the store first, so a restart loses
nothing acknowledged. Loaded from the store at start by `core.Hub.load`. The working-set
types convert to and from the store's records (hub.records) here and nowhere else:
`from_record` and `record()` on each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fleetops.hub import config, errors, plan, records


@dataclasses.dataclass
class Settings:
    """The hub.yaml in force, and why the last reload was refused ('' when it was not)."""

    cfg: config.Config
    error: str = ""

    def app(self, name: str) -> config.App:
        """The configured app called `name`, or NotFound naming the apps there are."""
        app = self.cfg.app(name)
        if app is None:
            names = ", ".join(a.name for a in self.cfg.apps) or "(none)"
            raise errors.NotFound(f"no app {name!r} in {self.cfg.file}; apps: {names}")
        return app


@dataclasses.dataclass(frozen=True)
class Assignment:
    """(cluster, app) -> the bundle and revision it should run, with its sync policy."""

    cluster: str
    app: str
    target: str
    revision: str
    digest: str
    namespace: str
    policy: Mapping[str, bool | int]  # config.Sync's fields (SyncPolicy's field names)
    paused: bool
    reason: str  # why this revision: auto, pin, sync, hold
    allow_mass_prune: str = ""  # the digest an operator allowed to prune past the guard
    generation: int = 0
    updated_at: float = 0.0

    @classmethod
    def from_record(cls, r: records.Assignment) -> Assignment:
        return cls(
            cluster=r.cluster,
            app=r.app,
            target=r.target,
            revision=r.revision,
            digest=r.digest,
            namespace=r.namespace,
            policy=dict(r.policy),
            paused=r.paused,
            reason=r.reason,
            allow_mass_prune=r.allow_mass_prune,
            generation=r.generation,
            updated_at=r.updated_at,
        )

    def record(self) -> records.Assignment:
        """The store's record of it."""
        return records.Assignment(
            cluster=self.cluster,
            app=self.app,
            target=self.target,
            revision=self.revision,
            digest=self.digest,
            generation=self.generation,
            namespace=self.namespace,
            policy=dict(self.policy),
            paused=self.paused,
            reason=self.reason,
            updated_at=self.updated_at,
            allow_mass_prune=self.allow_mass_prune,
        )

    def same_delivery(self, other: Assignment) -> bool:
        """Whether the agent would get the same thing (the reason does not travel)."""
        return dataclasses.replace(
            self, reason="", generation=0, updated_at=0.0
        ) == dataclasses.replace(other, reason="", generation=0, updated_at=0.0)


class Assignments:
    """Every (cluster, app) assignment, and per (app, cluster) why planning last failed."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Assignment] = {}
        self._by_cluster: dict[str, dict[str, Assignment]] = {}
        self.errors: dict[tuple[str, str], str] = {}  # (app, cluster) -> why planning failed

    def set(self, a: Assignment) -> None:
        self._rows[(a.cluster, a.app)] = a
        self._by_cluster.setdefault(a.cluster, {})[a.app] = a

    def drop(self, cluster: str, app: str) -> None:
        self._rows.pop((cluster, app), None)
        self._by_cluster.get(cluster, {}).pop(app, None)

    def drop_cluster(self, cluster: str) -> None:
        for app in list(self._by_cluster.pop(cluster, {})):
            self._rows.pop((cluster, app), None)

    def get(self, cluster: str, app: str) -> Assignment | None:
        return self._rows.get((cluster, app))

    def of(self, cluster: str) -> dict[str, Assignment]:
        """app -> assignment of one cluster (a copy)."""
        return dict(self._by_cluster.get(cluster, {}))

    def all(self) -> list[Assignment]:
        return [self._rows[k] for k in sorted(self._rows)]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)


@dataclasses.dataclass
class Cluster:
    """A registered cluster. Changed in place (connectivity is news several times a minute),
    so whoever holds one sees the latest."""

    name: str
    labels: dict[str, str] = dataclasses.field(default_factory=dict)  # from its token
    facts: dict[str, str] = dataclasses.field(default_factory=dict)  # what the agent says
    agent_version: str = ""
    kubernetes_version: str = ""
    registered_at: float = 0.0
    last_seen: float = 0.0
    connected: bool = False
    reason: str = ""  # why it disconnected
    cert_fingerprint: str = ""  # the only certificate accepted for it ('' before they were kept)
    cert_expires: float = 0.0
    # the certificate a renewal was made with: accepted until cert_fingerprint is first
    # presented ('' when no handover is under way)
    previous_fingerprint: str = ""
    previous_expires: float = 0.0

    @classmethod
    def from_record(cls, r: records.Cluster) -> Cluster:
        return cls(
            name=r.name,
            labels=dict(r.labels),
            facts=dict(r.agent_labels),
            agent_version=r.agent_version,
            kubernetes_version=r.kubernetes_version,
            registered_at=r.registered_at,
            last_seen=r.last_seen,
            connected=r.connected,
            reason=r.reason,
            cert_fingerprint=r.cert_fingerprint,
            cert_expires=r.cert_expires,
            previous_fingerprint=r.previous_fingerprint,
            previous_expires=r.previous_expires,
        )

    def record(self) -> records.Cluster:
        """The store's record of it (a snapshot: later changes in place are not in it)."""
        return records.Cluster(
            name=self.name,
            labels=dict(self.labels),
            agent_labels=dict(self.facts),
            agent_version=self.agent_version,
            kubernetes_version=self.kubernetes_version,
            registered_at=self.registered_at,
            last_seen=self.last_seen,
            connected=self.connected,
            reason=self.reason,
            cert_fingerprint=self.cert_fingerprint,
            cert_expires=self.cert_expires,
            previous_fingerprint=self.previous_fingerprint,
            previous_expires=self.previous_expires,
        )


class Clusters:
    """The registered clusters."""

    def __init__(self) -> None:
        self.rows: dict[str, Cluster] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.rows

    def names(self) -> list[str]:
        return sorted(self.rows)

    def row(self, name: str) -> Cluster | None:
        return self.rows.get(name)

    def put(self, cluster: Cluster) -> None:
        """Believe `cluster` (already stored): the record others hold is updated in place."""
        known = self.rows.get(cluster.name)
        if known is None:
            self.rows[cluster.name] = cluster
            return
        for f in dataclasses.fields(cluster):
            setattr(known, f.name, getattr(cluster, f.name))

    def require(self, name: str) -> None:
        if name not in self.rows:
            raise errors.NotFound(f"no cluster {name!r} is registered")

    def registered_labels(self, name: str) -> dict[str, str]:
        """The labels the cluster's registration token carried."""
        row = self.rows.get(name)
        return dict(row.labels) if row is not None else {}

    def labels_of(self, cfg: config.Config, name: str) -> dict[str, str]:
        """The labels selectors match (hub.yaml over the token's; never the agent's facts)."""
        return plan.cluster_labels(cfg, name, self.registered_labels(name))


@dataclasses.dataclass
class Choices:
    """What operators decided: pins ((app, cluster or '') -> revision), paused apps (app ->
    reason) and sync requests ((app, cluster or '')) not yet planned."""

    pins: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    paused: dict[str, str] = dataclasses.field(default_factory=dict)
    sync_requests: set[tuple[str, str]] = dataclasses.field(default_factory=set)

    def pin_of(self, app: str, cluster: str) -> str:
        """The pin that applies to (app, cluster): its own, else the app's, else ''."""
        return self.pins.get((app, cluster), "") or self.pins.get((app, ""), "")
