"""The hub's working set in memory, in small holders, so that each part of the hub is handed
only what it reads or writes: the config in force, the registered clusters, the assignments,
and the operator's choices (pins, pauses, sync requests).

Plain state, no I/O, and no import of the store (the pure planner and status read these):
whoever changes a holder has written the change through the store first, so a restart loses
nothing acknowledged. Loaded from the store at start by `core.Hub.load`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fleetops.hub import config, errors, plan


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
    policy: str  # JSON of config.Sync's fields (SyncPolicy's field names)
    paused: bool
    reason: str  # why this revision: auto, pin, sync, hold
    allow_mass_prune: str = ""  # the digest an operator allowed to prune past the guard
    generation: int = 0
    updated_at: float = 0.0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Assignment:
        return cls(
            cluster=str(row["cluster"]),
            app=str(row["app"]),
            target=str(row["target"] or ""),
            revision=str(row["revision"] or ""),
            digest=str(row["digest"] or ""),
            namespace=str(row["namespace"] or ""),
            policy=str(row["policy"] or "{}"),
            paused=bool(row["paused"]),
            reason=str(row["reason"] or ""),
            allow_mass_prune=str(row.get("allow_mass_prune") or ""),
            generation=int(row["generation"] or 0),
            updated_at=float(row["updated_at"] or 0.0),
        )

    def row(self) -> dict[str, Any]:
        """The store's row for it."""
        out = dataclasses.asdict(self)
        out["paused"] = int(self.paused)
        return out

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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Cluster:
        return cls(
            name=str(row["name"]),
            labels=_labels(row.get("labels")),
            facts=_labels(row.get("agent_labels")),
            agent_version=str(row.get("agent_version") or ""),
            kubernetes_version=str(row.get("kubernetes_version") or ""),
            registered_at=float(row.get("registered_at") or 0.0),
            last_seen=float(row.get("last_seen") or 0.0),
            connected=bool(row.get("connected")),
            reason=str(row.get("reason") or ""),
            cert_fingerprint=str(row.get("cert_fingerprint") or ""),
            cert_expires=float(row.get("cert_expires") or 0.0),
        )

    def row(self) -> dict[str, Any]:
        """The store's row for it."""
        out = dataclasses.asdict(self)
        out["labels"] = json.dumps(self.labels, sort_keys=True)
        out["agent_labels"] = json.dumps(out.pop("facts"), sort_keys=True)
        out["connected"] = int(self.connected)
        return out


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


def _labels(text: str | None) -> dict[str, str]:
    """Labels as the store keeps them (JSON text, as store.dumps writes it)."""
    return {str(k): str(v) for k, v in json.loads(text).items()} if text else {}
