"""What the hub keeps, as typed values: one frozen dataclass per stored row.

These are the words of the store's interface (hub.storeapi): the store reads and writes them,
the rest of the hub builds and reads them. Plain values only: this module never does I/O and
knows no database, so a PostgreSQL store can hand out the very same records as the SQLite one.
Labels and policies are mappings here; how a backend encodes them (JSON text in SQLite) is the
backend's business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cluster:
    """A registered cluster: who it is, what its agent said last, and its certificate."""

    name: str
    labels: Mapping[str, str]  # from its registration token (`cluster add --labels`)
    agent_labels: Mapping[str, str]  # what the agent says of itself: shown, never matched
    agent_version: str
    kubernetes_version: str
    registered_at: float
    last_seen: float  # 0: never connected
    connected: bool
    reason: str  # why it disconnected
    cert_fingerprint: str = ""  # "": registered before fingerprints were kept
    cert_expires: float = 0.0
    # the certificate its last renewal was made with, accepted until the renewed one is first
    # presented ("": no renewal handover under way)
    previous_fingerprint: str = ""
    previous_expires: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegistrationToken:
    """A one-time, expiring token an agent registers with (`fleetops-hub token create`)."""

    id: str
    secret_hash: str
    cluster: str
    created_at: float
    expires_at: float
    used_at: float  # 0: not used yet
    labels: Mapping[str, str]  # the labels its cluster starts with


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiToken:
    """A named fleet API token; the secret itself is never stored, only its hash."""

    name: str
    role: str
    secret_hash: str
    created_at: float
    expires_at: float  # 0: no expiry
    created_by: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Repo:
    """A tracked Git repo: the head revision the hub last planned, and the last fetch error."""

    name: str
    url: str
    branch: str
    revision: str
    fetched_at: float
    error: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Revision:
    """A commit the hub saw at the head of a repo."""

    repo: str
    sha: str
    message: str  # its subject: the first line of the commit message
    author: str  # the author's name
    time: int  # the committer time (seconds)
    seen_at: float  # when the hub first saw it at the head
    author_email: str = ""  # as Git has it ("": seen before v6 kept it)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bundle:
    """Rendered manifests, content-addressed (serialized fleetops.v1.Bundle)."""

    digest: str
    app: str
    size: int
    data: bytes
    created_at: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Render:
    """The outcome of rendering (app, target) at a revision: a bundle digest or an error."""

    app: str
    target: str
    revision: str
    digest: str  # "": it failed
    error: str
    key: str  # the overrides hash it was rendered with
    rendered_at: float
    # a chart from a Helm repository: the archives it used, "repo/chart@version#digest;..."
    # (the chart first, then fetched dependencies); "" for a chart in Git or no chart
    charts: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Assignment:
    """(cluster, app) -> the bundle and revision the agent must run, with the app's policy."""

    cluster: str
    app: str
    target: str
    revision: str
    digest: str
    generation: int
    namespace: str
    # SyncPolicy field name -> value, as written (rows from older hubs may lack newer fields)
    policy: Mapping[str, bool | int]
    paused: bool
    reason: str  # why this revision: auto, pin, sync, hold
    updated_at: float
    allow_mass_prune: str = ""  # the digest allowed to prune past the guard, once


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    """The latest report of (cluster, app): the columns the hub queries, and the whole
    serialized fleetops.v1.AppReport in `data`."""

    cluster: str
    app: str
    revision: str
    digest: str
    generation: int
    sync: int
    health: int
    reason: str
    data: bytes
    updated_at: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pin:
    """An app (cluster "": on every cluster) pinned to a revision by a rollback."""

    app: str
    cluster: str
    revision: str
    actor: str
    at: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rollout:
    """An app's rollout book (hub.rollouts' JSON: the newest rollout's state, last good
    revisions, rejected revisions)."""

    app: str
    data: str
    updated_at: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageCommit:
    """An image update commit (hub.images): `revision` in `repo` set `policy`'s tag to `tag`
    of `image` (registry/repository, as hub.registryspec.Image writes it)."""

    repo: str
    revision: str
    policy: str
    tag: str
    image: str
    image_update: str
    at: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class AppState:
    """Whether an operator paused an app, and why."""

    app: str
    paused: bool
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """One history entry, as stored (with its id, in the order they were recorded)."""

    id: int
    at: float
    app: str
    cluster: str
    revision: str
    previous_revision: str
    cause: int
    actor: str
    kind: str
    message: str
    # the commit `revision` names, in Git's own words ("" / 0: the hub never saw it)
    author: str = ""
    author_email: str = ""
    subject: str = ""
    committed_at: int = 0  # the committer time (seconds)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewEvent:
    """A history entry to record; the store gives it its id (and its time, when `at` is None)."""

    kind: str
    message: str
    cause: int = 0
    actor: str = ""
    app: str = ""
    cluster: str = ""
    revision: str = ""
    previous_revision: str = ""
    at: float | None = None
    # the commit `revision` names, in Git's own words ("" / 0: the hub never saw it)
    author: str = ""
    author_email: str = ""
    subject: str = ""
    committed_at: int = 0  # the committer time (seconds)
