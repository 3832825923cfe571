"""The hub's store on a real SQLite file: databases written by older hubs migrate with their
rows intact, every typed query gives back what was put in, and a write the disk refuses is a
StoreUnavailable that leaves nothing half-written."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sqlite3
from collections.abc import Iterator

import pytest

from fleetops.hub import errors, migrations, records, store
from fleetops.proto.v1 import types_pb2

# What a v1 hub (fleetops before migration 2) created: sqlite-utils' DDL, as it wrote it.
V1_SCHEMA = """
CREATE TABLE "migrations" ("version" INTEGER PRIMARY KEY, "at" REAL);
CREATE TABLE "clusters" ("name" TEXT PRIMARY KEY, "labels" TEXT, "agent_labels" TEXT,
   "agent_version" TEXT, "kubernetes_version" TEXT, "registered_at" REAL, "last_seen" REAL,
   "connected" INTEGER, "reason" TEXT);
CREATE TABLE "tokens" ("id" TEXT PRIMARY KEY, "secret_hash" TEXT, "cluster" TEXT,
   "created_at" REAL, "expires_at" REAL, "used_at" REAL);
CREATE TABLE "repos" ("name" TEXT PRIMARY KEY, "url" TEXT, "branch" TEXT, "revision" TEXT,
   "fetched_at" REAL, "error" TEXT);
CREATE TABLE "revisions" ("repo" TEXT, "sha" TEXT, "message" TEXT, "author" TEXT,
   "time" INTEGER, "seen_at" REAL, PRIMARY KEY ("repo", "sha"));
CREATE TABLE "bundles" ("digest" TEXT PRIMARY KEY, "app" TEXT, "size" INTEGER, "data" BLOB,
   "created_at" REAL);
CREATE TABLE "renders" ("app" TEXT, "target" TEXT, "revision" TEXT, "digest" TEXT,
   "error" TEXT, "key" TEXT, "rendered_at" REAL, PRIMARY KEY ("app", "target", "revision"));
CREATE TABLE "assignments" ("cluster" TEXT, "app" TEXT, "target" TEXT, "revision" TEXT,
   "digest" TEXT, "generation" INTEGER, "namespace" TEXT, "policy" TEXT, "paused" INTEGER,
   "reason" TEXT, "updated_at" REAL, PRIMARY KEY ("cluster", "app"));
CREATE TABLE "pins" ("app" TEXT, "cluster" TEXT, "revision" TEXT, "actor" TEXT, "at" REAL,
   PRIMARY KEY ("app", "cluster"));
CREATE TABLE "app_state" ("app" TEXT PRIMARY KEY, "paused" INTEGER, "reason" TEXT);
CREATE TABLE "reports" ("cluster" TEXT, "app" TEXT, "revision" TEXT, "digest" TEXT,
   "generation" INTEGER, "sync" INTEGER, "health" INTEGER, "reason" TEXT, "data" BLOB,
   "updated_at" REAL, PRIMARY KEY ("cluster", "app"));
CREATE TABLE "events" ("id" INTEGER PRIMARY KEY, "at" REAL, "app" TEXT, "cluster" TEXT,
   "revision" TEXT, "previous_revision" TEXT, "cause" INTEGER, "actor" TEXT, "kind" TEXT,
   "message" TEXT);
CREATE INDEX "idx_events_app_id" ON "events" ("app", "id");
CREATE INDEX "idx_events_cluster_id" ON "events" ("cluster", "id");
INSERT INTO migrations VALUES (1, 1000.0);
"""
# ...and what migration 2 added, as a v2 hub ran it
V2_STEP = """
ALTER TABLE tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
INSERT INTO migrations VALUES (2, 2000.0);
"""
# ...and what migration 3 added, as a v3 hub ran it, with a cluster it had issued a certificate
V3_STEP = """
ALTER TABLE clusters ADD COLUMN cert_fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE clusters ADD COLUMN cert_expires REAL NOT NULL DEFAULT 0;
ALTER TABLE assignments ADD COLUMN allow_mass_prune TEXT NOT NULL DEFAULT '';
CREATE TABLE "api_tokens" ("name" TEXT PRIMARY KEY, "role" TEXT, "secret_hash" TEXT,
   "created_at" REAL, "expires_at" REAL, "created_by" TEXT);
CREATE UNIQUE INDEX "idx_api_tokens_secret_hash" ON "api_tokens" ("secret_hash");
INSERT INTO migrations VALUES (3, 3000.0);
INSERT INTO clusters VALUES ('edge-3', '{}', '{}', '0.3.0', 'v1.31.0', 300.0, 0.0, 0, '',
    'f-current', 5000.0);
"""
SHA = "a" * 40
OLD_SHA = "b" * 40
POLICY = {"auto": True, "prune": False, "self_heal": False, "force_conflicts": True}  # v1's


def old_rows(conn: sqlite3.Connection) -> None:
    """A fleet as a v1 hub stored it: one cluster running one app, its history, and NULLs
    where v1 wrote none."""
    report = types_pb2.AppReport(app="web", revision=SHA, reason="all good")
    conn.executescript(
        f"""
        INSERT INTO clusters VALUES ('edge-1', '{{"env": "dev"}}', '{{"arch": "arm64"}}',
            '0.1.0', 'v1.31.0', 100.0, 200.0, 1, '');
        INSERT INTO tokens (id, secret_hash, cluster, created_at, expires_at, used_at)
            VALUES ('t1', 'hash1', 'edge-2', 100.0, 9999999999.0, 0);
        INSERT INTO repos VALUES ('platform', 'https://git.example/platform.git', 'main',
            '{SHA}', 300.0, NULL);
        INSERT INTO revisions VALUES ('platform', '{OLD_SHA}', 'first', 'ann', 10, 50.0);
        INSERT INTO revisions VALUES ('platform', '{SHA}', 'second', 'bob', 20, 60.0);
        INSERT INTO bundles VALUES ('d1', 'web', 3, x'010203', 70.0);
        INSERT INTO renders VALUES ('web', 'default', '{SHA}', 'd1', '', NULL, 80.0);
        INSERT INTO assignments VALUES ('edge-1', 'web', 'default', '{SHA}', 'd1', 4, 'web',
            '{json.dumps(POLICY, sort_keys=True)}', 0, 'auto', 90.0);
        INSERT INTO pins VALUES ('web', '', '{OLD_SHA}', 'alice', 95.0);
        INSERT INTO app_state VALUES ('api', 1, NULL);
        INSERT INTO events VALUES (1, 99.0, 'web', 'edge-1', '{SHA}', '', 2, 'alice',
            'assigned', 'assigned to edge-1');
        """
    )
    conn.execute(
        "INSERT INTO reports VALUES ('edge-1', 'web', ?, 'd1', 4, 1, 1, 'all good', ?, 98.0)",
        [SHA, report.SerializeToString()],
    )


def old_database(path: pathlib.Path, *, version: int) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(V1_SCHEMA + (V2_STEP if version >= 2 else ""))
        old_rows(conn)
        if version >= 2:
            conn.execute("UPDATE tokens SET labels = '{\"env\": \"prod\"}' WHERE id = 't1'")


@pytest.fixture
def db(tmp_path: pathlib.Path) -> Iterator[store.Store]:
    s = store.Store(tmp_path / "hub.db")
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def opened(path: pathlib.Path) -> Iterator[store.Store]:
    s = store.Store(path)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- migrations


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_database_migrates_to_the_latest_version_with_its_rows_intact(
    tmp_path: pathlib.Path, version: int
) -> None:
    path = tmp_path / "hub.db"
    old_database(path, version=version)
    with opened(path) as s:
        ran = s.call(lambda: [r[0] for r in s.db.conn.execute("SELECT version FROM migrations")])
        assert ran == [m.version for m in migrations.MIGRATIONS]
        assert s.call(s.clusters) == [
            records.Cluster(
                name="edge-1",
                labels={"env": "dev"},
                agent_labels={"arch": "arm64"},
                agent_version="0.1.0",
                kubernetes_version="v1.31.0",
                registered_at=100.0,
                last_seen=200.0,
                connected=True,
                reason="",
                cert_fingerprint="",  # registered before fingerprints: trusted until renewal
                cert_expires=0.0,
            )
        ]
        [token] = s.call(s.registration_tokens)
        assert (token.id, token.cluster, token.used_at) == ("t1", "edge-2", 0.0)
        assert token.labels == ({"env": "prod"} if version >= 2 else {})
        assert s.call(s.repos) == [
            records.Repo(
                name="platform",
                url="https://git.example/platform.git",
                branch="main",
                revision=SHA,
                fetched_at=300.0,
                error="",
            )
        ]
        assert [r.message for r in s.call(s.revisions, "platform")] == ["second", "first"]
        assert s.call(s.bundle, "d1") == records.Bundle(
            digest="d1", app="web", size=3, data=b"\x01\x02\x03", created_at=70.0
        )
        assert s.call(s.renders) == [
            records.Render(
                app="web",
                target="default",
                revision=SHA,
                digest="d1",
                error="",
                key="",
                rendered_at=80.0,
            )
        ]
        [a] = s.call(s.assignments)
        assert (a.cluster, a.app, a.revision, a.digest, a.generation) == (
            "edge-1", "web", SHA, "d1", 4
        )  # fmt: skip
        assert a.policy == POLICY and not a.paused and a.allow_mass_prune == ""
        [report] = s.call(s.reports)
        assert types_pb2.AppReport.FromString(report.data).reason == "all good"
        assert s.call(s.pins) == [
            records.Pin(app="web", cluster="", revision=OLD_SHA, actor="alice", at=95.0)
        ]
        assert s.call(s.app_states) == [records.AppState(app="api", paused=True, reason="")]
        assert [e.message for e in s.call(s.events)] == ["assigned to edge-1"]
        assert s.call(s.api_tokens) == []  # the table migration 3 added is there, empty
        assert s.call(s.renders)[0].charts == ""  # migration 5: a render of a chart in Git


def test_a_v3_database_migrates_with_its_certificates_and_no_handover_under_way(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "hub.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(V1_SCHEMA + V2_STEP + V3_STEP)
    with opened(path) as s:
        ran = s.call(lambda: [r[0] for r in s.db.conn.execute("SELECT version FROM migrations")])
        assert ran == [m.version for m in migrations.MIGRATIONS]
        [edge] = s.call(s.clusters)
        assert (edge.name, edge.cert_fingerprint, edge.cert_expires) == (
            "edge-3",
            "f-current",
            5000.0,
        )
        assert (edge.previous_fingerprint, edge.previous_expires) == ("", 0.0)
        # the columns migration 4 added hold a renewal handover across a reopen
        handover = dataclasses.replace(
            edge, cert_fingerprint="f-new", cert_expires=9000.0,
            previous_fingerprint="f-current", previous_expires=5000.0,
        )  # fmt: skip
        s.call(s.put_cluster, handover)
    with opened(path) as s:
        assert s.call(s.clusters) == [handover]


def test_reopening_runs_no_migration_twice(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "hub.db"
    with opened(path) as s:
        s.call(s.put_app_state, records.AppState(app="web", paused=True, reason="freeze"))
        first = s.call(lambda: list(s.db.conn.execute("SELECT * FROM migrations")))
    with opened(path) as s:
        assert s.call(lambda: list(s.db.conn.execute("SELECT * FROM migrations"))) == first
        assert s.call(s.app_states) == [records.AppState(app="web", paused=True, reason="freeze")]


# ---------------------------------------------------------------- typed queries


def cluster(name: str, **changes: object) -> records.Cluster:
    fields: dict[str, object] = {
        "name": name, "labels": {"env": "dev"}, "agent_labels": {}, "agent_version": "0.2.0",
        "kubernetes_version": "v1.31.0", "registered_at": 1.0, "last_seen": 0.0,
        "connected": False, "reason": "", "cert_fingerprint": "f1", "cert_expires": 9.0,
    }  # fmt: skip
    fields.update(changes)
    return records.Cluster(**fields)  # type: ignore[arg-type]


def assignment(c: str, app: str, revision: str = SHA, **changes: object) -> records.Assignment:
    fields: dict[str, object] = {
        "cluster": c, "app": app, "target": "default", "revision": revision, "digest": "d1",
        "generation": 1, "namespace": app, "policy": {"auto": True, "max_prune_percent": 50},
        "paused": False, "reason": "auto", "updated_at": 5.0, "allow_mass_prune": "",
    }  # fmt: skip
    fields.update(changes)
    return records.Assignment(**fields)  # type: ignore[arg-type]


def report(c: str, app: str) -> records.Report:
    data = types_pb2.AppReport(app=app, revision=SHA).SerializeToString()
    return records.Report(
        cluster=c,
        app=app,
        revision=SHA,
        digest="d1",
        generation=1,
        sync=1,
        health=1,
        reason="",
        data=data,
        updated_at=6.0,
    )


def token(token_id: str, cluster: str, **changes: object) -> records.RegistrationToken:
    fields: dict[str, object] = {
        "id": token_id, "secret_hash": "h", "cluster": cluster, "created_at": 1.0,
        "expires_at": 1e12, "used_at": 0.0, "labels": {},
    }  # fmt: skip
    fields.update(changes)
    return records.RegistrationToken(**fields)  # type: ignore[arg-type]


def test_a_cluster_is_stored_replaced_and_read_back(db: store.Store) -> None:
    db.call(db.put_cluster, cluster("edge-1"))
    db.call(db.put_cluster, cluster("edge-2"))
    renewed = cluster("edge-1", cert_fingerprint="f2", connected=True, agent_labels={"a": "b"})
    db.call(db.put_cluster, renewed)
    assert db.call(db.clusters) == [renewed, cluster("edge-2")]


def test_removing_a_cluster_forgets_what_belongs_to_it_and_nothing_else(db: store.Store) -> None:
    for name in ("gone", "stays"):
        db.call(db.put_cluster, cluster(name))
        db.call(db.put_assignments, [assignment(name, "web")])
        db.call(db.put_reports, [report(name, "web")])
        db.call(
            db.put_pin, records.Pin(app="web", cluster=name, revision=SHA, actor="alice", at=1.0)
        )
        db.call(db.add_registration_token, token(f"unused-{name}", name))
    everywhere = records.Pin(app="web", cluster="", revision=SHA, actor="alice", at=1.0)
    db.call(db.put_pin, everywhere)
    db.call(db.remove_cluster, "gone")
    assert [c.name for c in db.call(db.clusters)] == ["stays"]
    assert [a.cluster for a in db.call(db.assignments)] == ["stays"]
    assert [r.cluster for r in db.call(db.reports)] == ["stays"]
    assert [p.cluster for p in db.call(db.pins)] == ["", "stays"]
    assert [t.id for t in db.call(db.registration_tokens)] == ["unused-stays"]


def test_a_registration_token_works_once_with_its_secret_before_it_expires(
    db: store.Store,
) -> None:
    t1 = token("t1", "edge-1", secret_hash="right", expires_at=100.0, labels={"env": "dev"})
    db.call(db.add_registration_token, t1)
    db.call(db.add_registration_token, token("t2", "edge-2", secret_hash="right", expires_at=100))
    assert db.call(db.registration_tokens)[0] == t1
    use = db.use_registration_token
    assert db.call(use, token_id="t1", secret_hash="wrong", now=50.0) is None
    assert db.call(use, token_id="t2", secret_hash="right", now=100.0) is None  # expired
    used = db.call(use, token_id="t1", secret_hash="right", now=50.0)
    assert used is not None and (used.cluster, used.labels, used.used_at) == (
        "edge-1", {"env": "dev"}, 50.0
    )  # fmt: skip
    assert db.call(use, token_id="t1", secret_hash="right", now=51.0) is None  # one-time


def test_api_tokens_are_named_once_listed_by_name_and_revoked(db: store.Store) -> None:
    bob = records.ApiToken(
        name="bob",
        role="readonly",
        secret_hash="hb",
        created_at=1.0,
        expires_at=0.0,
        created_by="admin",
    )
    alice = records.ApiToken(
        name="alice",
        role="operator",
        secret_hash="ha",
        created_at=2.0,
        expires_at=99.0,
        created_by="admin",
    )
    assert db.call(db.add_api_token, bob) and db.call(db.add_api_token, alice)
    assert not db.call(
        db.add_api_token,
        records.ApiToken(
            name="bob",
            role="operator",
            secret_hash="hx",
            created_at=3.0,
            expires_at=0,
            created_by="x",
        ),
    )
    assert db.call(db.api_tokens) == [alice, bob]
    assert db.call(db.revoke_api_token, "bob") and not db.call(db.revoke_api_token, "bob")
    assert db.call(db.api_tokens) == [alice]


def test_repos_and_revisions_round_trip_newest_revision_first(db: store.Store) -> None:
    repo = records.Repo(
        name="platform",
        url="https://git.example/p.git",
        branch="main",
        revision=SHA,
        fetched_at=5.0,
        error="",
    )
    db.call(db.put_repo, repo)
    db.call(
        db.put_repo,
        records.Repo(
            name="platform",
            url=repo.url,
            branch="main",
            revision=SHA,
            fetched_at=6.0,
            error="fetch failed",
        ),
    )
    assert db.call(db.repos) == [
        records.Repo(
            name="platform",
            url=repo.url,
            branch="main",
            revision=SHA,
            fetched_at=6.0,
            error="fetch failed",
        )
    ]
    old = records.Revision(
        repo="platform", sha=OLD_SHA, message="first", author="ann", time=10, seen_at=1.0
    )
    new = records.Revision(
        repo="platform", sha=SHA, message="second", author="bob", time=20, seen_at=2.0
    )
    db.call(db.put_revision, old)
    db.call(db.put_revision, new)
    db.call(
        db.put_revision,
        records.Revision(
            repo="other", sha=SHA, message="elsewhere", author="cy", time=30, seen_at=3.0
        ),
    )
    assert db.call(db.revisions, "platform") == [new, old]


def test_bundles_and_renders_round_trip(db: store.Store) -> None:
    bundle = records.Bundle(digest="d1", app="web", size=4, data=b"\x00\xffab", created_at=1.0)
    db.call(db.put_bundle, bundle)
    assert db.call(db.bundle, "d1") == bundle
    assert db.call(db.bundle, "nope") is None
    assert db.call(db.bundle_digests) == {"d1"}
    ok = records.Render(
        app="web", target="default", revision=SHA, digest="d1", error="", key="k1", rendered_at=2.0
    )
    failed = records.Render(
        app="web",
        target="prod",
        revision=SHA,
        digest="",
        error="helm: bad values",
        key="k2",
        rendered_at=3.0,
    )
    db.call(db.put_render, failed)
    db.call(db.put_render, ok)
    assert db.call(db.renders) == [ok, failed]


def test_assignments_round_trip_per_cluster_and_go_one_at_a_time(db: store.Store) -> None:
    rows = [assignment("edge-1", "web"), assignment("edge-1", "api"), assignment("edge-2", "web")]
    db.call(db.put_assignments, rows)
    newer = assignment("edge-1", "web", OLD_SHA, generation=2, paused=True, allow_mass_prune="d1")
    db.call(db.put_assignments, [newer])
    assert db.call(db.assignments_for_cluster, "edge-1") == [rows[1], newer]
    db.call(db.delete_assignment, cluster="edge-1", app="api")
    assert db.call(db.assignments) == [newer, rows[2]]


def test_reports_pins_and_app_states_round_trip(db: store.Store) -> None:
    db.call(db.put_reports, [report("edge-1", "web"), report("edge-2", "web")])
    assert db.call(db.reports) == [report("edge-1", "web"), report("edge-2", "web")]
    everywhere = records.Pin(app="web", cluster="", revision=OLD_SHA, actor="alice", at=1.0)
    db.call(db.put_pin, everywhere)
    db.call(db.put_pin, records.Pin(app="web", cluster="edge-1", revision=SHA, actor="bob", at=2.0))
    db.call(db.delete_pin, app="web", cluster="edge-1")
    assert db.call(db.pins) == [everywhere]
    db.call(db.put_app_state, records.AppState(app="web", paused=True, reason="freeze"))
    db.call(db.put_app_state, records.AppState(app="web", paused=False, reason=""))
    assert db.call(db.app_states) == [records.AppState(app="web", paused=False, reason="")]


def test_events_get_ids_in_order_and_filter_by_app_and_cluster(db: store.Store) -> None:
    user = types_pb2.CAUSE_USER
    paused = records.NewEvent(
        kind="paused", message="web paused", cause=user, actor="alice", app="web", at=5.0
    )
    first = db.call(db.record_event, paused)
    rest = db.call(db.record_events, [
        records.NewEvent(kind="assigned", message="to edge-1", app="web", cluster="edge-1"),
        records.NewEvent(kind="assigned", message="to edge-2", app="web", cluster="edge-2"),
        records.NewEvent(kind="token-created", message="token", cluster="edge-1"),
    ])  # fmt: skip
    assert first.at == 5.0 and first.actor == "alice" and first.cause == user
    assert [e.id for e in rest] == [first.id + 1, first.id + 2, first.id + 3]
    assert rest[0].at > 5.0  # no time given: when it was written
    assert db.call(db.events) == [*reversed(rest), first]
    assert [e.message for e in db.call(db.events, app="web", cluster="edge-1")] == [
        "to edge-1",
        "web paused",  # fleet-wide entries belong to every cluster's history
    ]
    assert [e.message for e in db.call(db.events, limit=2)] == ["token", "to edge-2"]


def test_rows_in_the_database_and_the_typed_queries_agree(db: store.Store) -> None:
    """What is in the tables (JSON text, 0/1 flags), written by SQL or by the typed queries,
    reads back the same either way (the untyped row API these once went through is gone)."""
    sync = {"auto": True, "prune": True, "self_heal": False, "force_conflicts": True,
            "allow_empty": False, "max_prune_percent": 50}  # fmt: skip

    def sql(text: str, args: list[object]) -> list[tuple[object, ...]]:
        return list(db.db.conn.execute(text, args).fetchall())

    db.call(sql, "INSERT INTO assignments (cluster, app, target, revision, digest, generation, "
            "namespace, policy, paused, reason, updated_at, allow_mass_prune) "
            "VALUES (?, 'web', 'default', ?, 'd1', 3, 'web', ?, 0, 'auto', 1.0, '')",
            ["edge-1", SHA, json.dumps(sync, sort_keys=True)])  # fmt: skip
    [typed] = db.call(db.assignments)
    assert typed.policy == sync and typed.generation == 3
    db.call(db.put_assignments, [assignment("edge-2", "web")])
    [(policy, paused)] = db.call(
        sql, "SELECT policy, paused FROM assignments WHERE cluster = ?", ["edge-2"]
    )
    assert json.loads(str(policy)) == {"auto": True, "max_prune_percent": 50}
    assert paused == 0
    e = db.call(db.record_event, records.NewEvent(app="web", kind="sync-requested", message="m"))
    assert db.call(db.events, app="web") == [e]
    db.call(db.add_registration_token, token("t1", "edge-3", labels={"env": "prod"}))
    used = db.call(db.use_registration_token, token_id="t1", secret_hash="h", now=2.0)
    assert used is not None and (used.cluster, dict(used.labels)) == ("edge-3", {"env": "prod"})


# ---------------------------------------------------------------- refused writes


async def test_a_full_disk_is_store_unavailable_and_leaves_nothing_half_written(
    db: store.Store,
) -> None:
    await db.run(db.put_assignments, [assignment("edge-0", "web")])
    pages = await db.run(lambda: db.db.conn.execute("PRAGMA page_count").fetchone()[0])
    # SQLite's own limit makes it answer "database or disk is full" as on a full disk
    await db.run(lambda: db.db.conn.execute(f"PRAGMA max_page_count = {pages + 2}"))
    big = [assignment(f"edge-{i}", "web", reason="x" * 2000) for i in range(1, 40)]
    with pytest.raises(errors.StoreUnavailable) as err:
        await db.run(db.put_assignments, big)
    assert f"cannot write to its data directory {db.path.parent}" in str(err.value)
    assert "disk is full" in str(err.value)
    assert not db.writable and db.write_errors == 1
    assert [a.cluster for a in await db.run(db.assignments)] == ["edge-0"]  # none of the 39
    events = [records.NewEvent(kind="k", message="m" * 2000) for _ in range(40)]
    with pytest.raises(errors.StoreUnavailable):
        await db.run(db.record_events, events)
    assert await db.run(db.events) == []
    assert db.write_errors == 2

    await db.run(lambda: db.db.conn.execute("PRAGMA max_page_count = 1073741823"))  # space back
    await db.run(db.put_assignments, big)
    assert db.writable
    assert len(await db.run(db.assignments)) == 40


async def test_a_read_only_database_is_store_unavailable_naming_the_data_directory(
    db: store.Store,
) -> None:
    await db.run(lambda: db.db.conn.execute("PRAGMA query_only = 1"))
    with pytest.raises(errors.StoreUnavailable, match="readonly database") as err:
        await db.run(
            db.put_pin, records.Pin(app="web", cluster="", revision=SHA, actor="alice", at=1.0)
        )
    assert str(db.path.parent) in str(err.value)
    assert not db.writable
    assert await db.run(db.pins) == []  # reads still answer
    assert db.writable
