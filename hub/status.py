"""One cell of the fleet matrix: what should run, what runs, and why, for (cluster, app).

Pure. Desired revision (the assignment) and applied revision (the agent's last report) are
always both shown; every state carries a one-line reason a person can act on. Also the
wording the hub's parts share for those reasons: `since` (how long ago), `short` (a revision),
`unexpected` (an error nobody planned for, said without a traceback).
"""

from __future__ import annotations

import time

from fleetops.hub import fleetstate
from fleetops.proto.v1 import fleet_pb2, types_pb2


def short(rev: str) -> str:
    return rev[:8] if rev else "-"


def since(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def cell(
    *,
    cluster: str,
    app: str,
    target: str,
    assignment: fleetstate.Assignment | None,
    report: types_pb2.AppReport | None,
    connected: bool,
    last_seen: float,
    render_error: str,
    wanted_revision: str,
    auto_sync: bool = True,
) -> fleet_pb2.ClusterAppStatus:
    out = fleet_pb2.ClusterAppStatus(cluster=cluster, app=app, target=target)
    if assignment is not None:
        out.desired_revision = assignment.revision
        out.desired_bundle = assignment.digest
    elif wanted_revision:
        out.desired_revision = wanted_revision
    if report is not None:
        out.applied_revision = report.revision
        out.applied_bundle = report.bundle_digest
        out.health = report.health
        out.resources.extend(report.resources)
        out.updated_at.CopyFrom(report.observed_at)
    else:
        out.health = types_pb2.HEALTH_STATUS_UNKNOWN
    offline = "" if connected else (
        f"cluster disconnected since {since(last_seen)}" if last_seen else "agent never connected"
    )  # fmt: skip

    if render_error:
        out.reason = f"render failed: {render_error.splitlines()[0]}"
    if assignment is None:
        out.sync = types_pb2.SYNC_STATUS_PENDING
        if not wanted_revision:
            waiting = "nothing rendered for this cluster yet"
        elif auto_sync:
            waiting = f"assigning {short(wanted_revision)} (rendering for this cluster)"
        else:
            waiting = f"auto-sync is off: sync to deploy {short(wanted_revision)}"
        out.reason = out.reason or waiting
        return out
    if report is None or report.bundle_digest != assignment.digest or (
        report.generation and report.generation < assignment.generation
        and report.sync != types_pb2.SYNC_STATUS_APPLY_FAILED
    ):  # fmt: skip
        if (
            report is not None
            and report.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
            and (report.generation >= assignment.generation)
        ):
            out.sync = types_pb2.SYNC_STATUS_APPLY_FAILED
            out.reason = out.reason or report.reason
            return out
        out.sync = types_pb2.SYNC_STATUS_PENDING
        out.reason = (
            out.reason
            or offline
            or (f"delivered {short(assignment.revision)}; waiting for the agent to apply it")
        )
        return out
    out.sync = report.sync
    if (
        report.sync == types_pb2.SYNC_STATUS_SYNCED
        and report.health == types_pb2.HEALTH_STATUS_HEALTHY
    ):
        out.reason = out.reason or offline or report.reason
    else:
        out.reason = out.reason or report.reason or offline
    if assignment.paused:
        out.reason = f"paused: {out.reason}"
    return out


def unexpected(stage: str, e: BaseException) -> str:
    """A readable reason for an error nobody planned for (the log has the traceback)."""
    detail = str(e).splitlines()[0][:300] if str(e) else ""
    return (
        f"{stage} failed: {type(e).__name__}"
        + (f": {detail}" if detail else "")
        + ("; the other apps are unaffected, fix this input and commit again")
    )
