"""Retention: the hub forgets old history and what nothing refers to, and keeps what a
cluster runs, a pin names or a quick rollback needs (a real SQLite store, migrations run)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from fleetops.hub import config, records, store
from fleetops.proto.v1 import types_pb2


@pytest.fixture
def db(tmp_path: pathlib.Path) -> Iterator[store.Store]:
    s = store.Store(tmp_path / "hub.db")
    try:
        yield s
    finally:
        s.close()


def revision(db: store.Store, sha: str, seen_at: float) -> None:
    db.call(db.put_revision, records.Revision(repo="platform", sha=sha, message="m", author="a",
            time=0, seen_at=seen_at))  # fmt: skip


def rendered(db: store.Store, sha: str, digest: str) -> None:
    db.call(db.put_render, records.Render(app="web", target="default", revision=sha,
            digest=digest, error="", key="", rendered_at=0.0))  # fmt: skip
    db.call(db.put_bundle, records.Bundle(digest=digest, app="web", size=1, data=b"x",
            created_at=0.0))  # fmt: skip


def test_old_events_and_agent_events_past_the_per_app_cap_are_forgotten(
    db: store.Store,
) -> None:
    agent, user = types_pb2.CAUSE_AGENT, types_pb2.CAUSE_USER

    def ev(app: str, at: float, message: str, cause: int) -> records.NewEvent:
        return records.NewEvent(app=app, at=at, kind="", message=message, cause=cause)

    db.call(db.record_events, [ev("web", 10.0, "ancient", user)])
    db.call(db.record_events, [ev("web", 999.0, "rollback by alice", user)])
    db.call(db.record_events, [ev("web", 1000.0 + i, f"e{i}", agent) for i in range(5)])
    db.call(db.record_events, [ev("api", 1000.0, "api", agent)])
    gone = db.call(db.prune, before=100.0, per_app=3, keep_revisions=5, capped_causes=(agent,))
    left = [e.message for e in db.call(db.events, limit=100)]
    # an agent's flood cannot push the operator's entry out; age still does
    assert left == ["api", "e4", "e3", "e2", "rollback by alice"]
    assert gone["events"] == 3


def test_renders_and_bundles_nothing_needs_go_and_the_assigned_one_stays(
    db: store.Store,
) -> None:
    for i in range(6):
        revision(db, f"{i:040x}", seen_at=float(i))
        rendered(db, f"{i:040x}", f"d{i}")
    # the oldest revision still runs somewhere
    db.call(db.put_assignments, [records.Assignment(cluster="c1", app="web", target="default",
            revision=f"{0:040x}", digest="d0", generation=1, namespace="", policy={},
            paused=False, reason="", updated_at=0.0)])  # fmt: skip
    db.call(db.prune, before=0.0, per_app=100, keep_revisions=2)
    renders = sorted(r.revision[-1] for r in db.call(db.renders))
    assert renders == ["0", "4", "5"]  # assigned, and the two newest
    assert db.call(db.bundle_digests) == {"d0", "d4", "d5"}


def test_retention_is_set_in_hub_yaml_with_clear_errors() -> None:
    cfg = config.parse("retention: {events: 30d, eventsPerApp: 500}", file="hub.yaml")
    assert cfg.retention.events == 30 * 86400 and cfg.retention.events_per_app == 500
    with pytest.raises(config.errors.ConfigError, match=r"retention.eventsPerApp: 0"):
        config.parse("retention: {eventsPerApp: 0}", file="hub.yaml")
