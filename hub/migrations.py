"""The store's schema history, as data: numbered migrations, each a list of steps.

A database records which versions it has run; the store (hub.store) runs the missing ones in
order, each in one transaction with its version row. Steps are plain values, so this module
never touches a database itself: never edit a released migration (databases out there ran it),
add the next one instead.
"""

from __future__ import annotations

import dataclasses

# A column's type as the store declares it: TEXT, REAL, INTEGER or BLOB.
ColumnType = type[str] | type[float] | type[int] | type[bytes]


@dataclasses.dataclass(frozen=True)
class CreateTable:
    name: str
    columns: dict[str, ColumnType]
    pk: str | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CreateIndex:
    table: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclasses.dataclass(frozen=True)
class Sql:
    """A statement SQLite runs as written (ALTER TABLE ... ADD COLUMN)."""

    text: str


Step = CreateTable | CreateIndex | Sql


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    why: str
    steps: tuple[Step, ...]


V1 = Migration(
    1,
    "the first schema",
    (
        CreateTable(
            "clusters",
            {
                "name": str,
                "labels": str,
                "agent_labels": str,
                "agent_version": str,
                "kubernetes_version": str,
                "registered_at": float,
                "last_seen": float,
                "connected": int,
                "reason": str,
            },
            pk="name",
        ),
        CreateTable(
            "tokens",
            {
                "id": str,
                "secret_hash": str,
                "cluster": str,
                "created_at": float,
                "expires_at": float,
                "used_at": float,
            },
            pk="id",
        ),
        CreateTable(
            "repos",
            {
                "name": str,
                "url": str,
                "branch": str,
                "revision": str,
                "fetched_at": float,
                "error": str,
            },
            pk="name",
        ),
        CreateTable(
            "revisions",
            {"repo": str, "sha": str, "message": str, "author": str, "time": int, "seen_at": float},
            pk=("repo", "sha"),
        ),
        CreateTable(
            "bundles",
            {"digest": str, "app": str, "size": int, "data": bytes, "created_at": float},
            pk="digest",
        ),
        CreateTable(
            "renders",
            {
                "app": str,
                "target": str,
                "revision": str,
                "digest": str,
                "error": str,
                "key": str,
                "rendered_at": float,
            },
            pk=("app", "target", "revision"),
        ),
        CreateTable(
            "assignments",
            {
                "cluster": str,
                "app": str,
                "target": str,
                "revision": str,
                "digest": str,
                "generation": int,
                "namespace": str,
                "policy": str,
                "paused": int,
                "reason": str,
                "updated_at": float,
            },
            pk=("cluster", "app"),
        ),
        CreateTable(
            "pins",
            {"app": str, "cluster": str, "revision": str, "actor": str, "at": float},
            pk=("app", "cluster"),
        ),
        CreateTable("app_state", {"app": str, "paused": int, "reason": str}, pk="app"),
        CreateTable(
            "reports",
            {
                "cluster": str,
                "app": str,
                "revision": str,
                "digest": str,
                "generation": int,
                "sync": int,
                "health": int,
                "reason": str,
                "data": bytes,
                "updated_at": float,
            },
            pk=("cluster", "app"),
        ),
        CreateTable(
            "events",
            {
                "id": int,
                "at": float,
                "app": str,
                "cluster": str,
                "revision": str,
                "previous_revision": str,
                "cause": int,
                "actor": str,
                "kind": str,
                "message": str,
            },
            pk="id",
        ),
        CreateIndex("events", ("app", "id")),
        CreateIndex("events", ("cluster", "id")),
    ),
)

V2 = Migration(
    2,
    "registration tokens carry the labels their cluster starts with (`cluster add --labels`)",
    (Sql("ALTER TABLE tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'"),),
)

V3 = Migration(
    3,
    "certificates are tracked per cluster (only the newest fingerprint is accepted), fleet "
    "API tokens are named, and an operator can allow one bundle to prune past the mass-prune "
    "guard",
    (
        Sql("ALTER TABLE clusters ADD COLUMN cert_fingerprint TEXT NOT NULL DEFAULT ''"),
        Sql("ALTER TABLE clusters ADD COLUMN cert_expires REAL NOT NULL DEFAULT 0"),
        Sql("ALTER TABLE assignments ADD COLUMN allow_mass_prune TEXT NOT NULL DEFAULT ''"),
        CreateTable(
            "api_tokens",
            {
                "name": str,
                "role": str,
                "secret_hash": str,
                "created_at": float,
                "expires_at": float,
                "created_by": str,
            },
            pk="name",
        ),
        CreateIndex("api_tokens", ("secret_hash",), unique=True),
    ),
)

V4 = Migration(
    4,
    "the certificate a renewal was made with is kept with its cluster until the new one is "
    "first presented, so a hub restart in that handover does not lock the agent out",
    (
        Sql("ALTER TABLE clusters ADD COLUMN previous_fingerprint TEXT NOT NULL DEFAULT ''"),
        Sql("ALTER TABLE clusters ADD COLUMN previous_expires REAL NOT NULL DEFAULT 0"),
    ),
)

V5 = Migration(
    5,
    "a render records the charts it fetched from Helm repositories (repository, chart, "
    "resolved version and digest), so the history says which upstream chart a revision ran",
    (Sql("ALTER TABLE renders ADD COLUMN charts TEXT NOT NULL DEFAULT ''"),),
)

V6 = Migration(
    6,
    "history in Git's own words: a revision keeps its author's email, and an event keeps the "
    "author, subject and committer time of the commit it names (the revision may be forgotten "
    "by retention long before the event is)",
    (
        Sql("ALTER TABLE revisions ADD COLUMN author_email TEXT NOT NULL DEFAULT ''"),
        Sql("ALTER TABLE events ADD COLUMN author TEXT NOT NULL DEFAULT ''"),
        Sql("ALTER TABLE events ADD COLUMN author_email TEXT NOT NULL DEFAULT ''"),
        Sql("ALTER TABLE events ADD COLUMN subject TEXT NOT NULL DEFAULT ''"),
        Sql("ALTER TABLE events ADD COLUMN committed_at INTEGER NOT NULL DEFAULT 0"),
    ),
)

V7 = Migration(
    7,
    "progressive delivery: each app's rollout (the state of its newest rollout, every "
    "cluster's last good revision and the revisions it rejected) as one JSON document, so a "
    "hub restarted mid-bake resumes with the clock",
    (CreateTable("rollouts", {"app": str, "data": str, "updated_at": float}, pk="app"),),
)

V8 = Migration(
    8,
    "image automation: which tag of which image each image update commit brought, so a tag "
    "whose revision a rollout rejected is never proposed again, across restarts and renames",
    (
        CreateTable(
            "image_commits",
            {
                "repo": str,
                "revision": str,
                "policy": str,
                "tag": str,
                "image": str,
                "image_update": str,
                "at": float,
            },
            pk=("repo", "revision", "policy"),
        ),
    ),
)

MIGRATIONS: tuple[Migration, ...] = (V1, V2, V3, V4, V5, V6, V7, V8)
