"""One cell of the fleet matrix, with no server: desired and applied revisions side by side,
the sync state, and a reason a person can act on."""

from __future__ import annotations

from fleetops.hub import fleetstate, status
from fleetops.proto.v1 import fleet_pb2, types_pb2

REV = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
OLD = "0f1e2d3c4b5a69788796a5b4c3d2e1f001234567"


def assigned(revision: str = REV, digest: str = "d1", *, generation: int = 2,
             paused: bool = False) -> fleetstate.Assignment:  # fmt: skip
    return fleetstate.Assignment(
        cluster="c1",
        app="web",
        target="default",
        revision=revision,
        digest=digest,
        namespace="web",
        policy={},
        paused=paused,
        reason="auto",
        generation=generation,
    )


def report(revision: str = REV, digest: str = "d1", **kw: object) -> types_pb2.AppReport:
    args: dict[str, object] = {
        "app": "web",
        "revision": revision,
        "bundle_digest": digest,
        "generation": 2,
        "sync": types_pb2.SYNC_STATUS_SYNCED,
        "health": types_pb2.HEALTH_STATUS_HEALTHY,
    }
    args.update(kw)
    return types_pb2.AppReport(**args)  # type: ignore[arg-type]


def cell(**kw: object) -> fleet_pb2.ClusterAppStatus:
    args: dict[str, object] = {
        "cluster": "c1",
        "app": "web",
        "target": "default",
        "assignment": assigned(),
        "report": report(),
        "connected": True,
        "last_seen": 0.0,
        "render_error": "",
        "wanted_revision": REV,
    }
    args.update(kw)
    return status.cell(**args)  # type: ignore[arg-type]


def test_an_applied_healthy_cell_is_synced_with_both_revisions_shown() -> None:
    c = cell(assignment=assigned(), report=report())
    assert c.sync == types_pb2.SYNC_STATUS_SYNCED
    assert c.health == types_pb2.HEALTH_STATUS_HEALTHY
    assert (c.desired_revision, c.applied_revision) == (REV, REV)


def test_nothing_assigned_yet_is_pending_and_says_what_it_waits_for() -> None:
    c = cell(assignment=None, report=None)
    assert c.sync == types_pb2.SYNC_STATUS_PENDING
    assert c.desired_revision == REV
    assert "assigning a1b2c3d4" in c.reason
    manual = cell(assignment=None, report=None, auto_sync=False)
    assert "auto-sync is off: sync to deploy a1b2c3d4" in manual.reason
    nothing = cell(assignment=None, report=None, wanted_revision="")
    assert nothing.reason == "nothing rendered for this cluster yet"


def test_a_new_revision_not_yet_applied_is_pending_with_the_old_one_shown_as_applied() -> None:
    c = cell(assignment=assigned(REV, "d2", generation=3), report=report(OLD, "d1"))
    assert c.sync == types_pb2.SYNC_STATUS_PENDING
    assert (c.desired_revision, c.applied_revision) == (REV, OLD)
    assert c.reason == "delivered a1b2c3d4; waiting for the agent to apply it"


def test_an_offline_cluster_says_since_when() -> None:
    c = cell(assignment=assigned(REV, "d2"), report=report(OLD, "d1"), connected=False,
             last_seen=1_700_000_000.0)  # fmt: skip
    assert c.reason == "cluster disconnected since 2023-11-14 22:13:20Z"
    never = cell(report=None, connected=False)
    assert never.reason == "agent never connected"


def test_a_failed_apply_of_the_current_generation_shows_the_agents_reason() -> None:
    failed = report(sync=types_pb2.SYNC_STATUS_APPLY_FAILED, reason="webhook denied", digest="d0")
    c = cell(assignment=assigned(), report=failed)
    assert c.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
    assert c.reason == "webhook denied"


def test_a_render_error_leads_the_reason_and_a_pause_is_said() -> None:
    c = cell(render_error="helm template failed\nline 2")
    assert c.reason == "render failed: helm template failed"
    drifted = report(sync=types_pb2.SYNC_STATUS_OUT_OF_SYNC, reason="drifted")
    paused = cell(assignment=assigned(paused=True), report=drifted)
    assert paused.reason == "paused: drifted"
