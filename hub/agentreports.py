"""What agents report: the latest report per (cluster, app) in memory at once, written to the
store in batches, and the few history entries reports make (applied, apply-failed, healed:
state transitions only, so an agent cannot flood the audit log).

An agent reports only apps assigned to its cluster; anything else is dropped and counted, and
what it says is bounded and cleaned first (hub.reports). Reports are never acknowledged to
agents, who resend their full state on every reconnect, so batching loses nothing a restart
would need. When the store cannot write, nothing is lost: it is kept and tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from fleetops.hub import errors, events, fleetstate, records, reports, status, storeapi
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")
STORE_RETRY = 5.0  # seconds between tries when the store cannot write
MAX_PENDING_EVENTS = 50_000  # agent history entries kept in memory while the store cannot write
AGENT_EVENT_GAP = 10.0  # seconds between a cluster's failure or heal entries for one app


@dataclasses.dataclass
class _AgentSeen:
    """What a cluster's reports for one app have put into history already."""

    applied: tuple[str, str] = ("", "")  # (digest, revision) of the last `applied` entry
    failed_at: float = -AGENT_EVENT_GAP  # monotonic time of the last `apply-failed` entry
    healed: int = 0  # heals reported since the last `healed` entry
    healed_at: float = -AGENT_EVENT_GAP
    timer: asyncio.TimerHandle | None = None  # tells heals held back by the gap


class Reports:
    def __init__(
        self,
        *,
        db: storeapi.StoreApi,
        assignments: fleetstate.Assignments,
        recorder: events.Recorder,
        announce: Callable[[str, str], None],
    ) -> None:
        self._db = db
        self._assignments = assignments
        self._recorder = recorder
        self._announce = announce  # (cluster, app): its cell reads differently
        self.latest: dict[tuple[str, str], types_pb2.AppReport] = {}
        self.dropped = 0  # reports for apps the cluster was not assigned
        self._pending: dict[tuple[str, str], records.Report] = {}
        self._pending_events: list[events.Entry] = []
        self._seen: dict[tuple[str, str], _AgentSeen] = {}
        self._flush_task: asyncio.Future[None] | None = None

    def load(self, stored: list[records.Report]) -> None:
        """The latest reports the store kept."""
        for r in stored:
            self.latest[(r.cluster, r.app)] = types_pb2.AppReport.FromString(r.data)

    def forget_cluster(self, cluster: str) -> None:
        for key in [k for k in self.latest if k[0] == cluster]:
            self.latest.pop(key, None)
            self._pending.pop(key, None)
        for key in [k for k in self._seen if k[0] == cluster]:
            del self._seen[key]

    async def take(
        self, cluster: str, report: types_pb2.AppReport, *, announce: bool = True
    ) -> None:
        """Take an agent's report: memory at once, the store in batches (`flush`)."""
        if (cluster, report.app) not in self._assignments:
            self.dropped += 1
            log.debug("cluster %s: report for unassigned app dropped", cluster)
            return
        report = reports.sanitize(report)
        key = (cluster, report.app)
        before = self.latest.get(key)
        self.latest[key] = report
        self._pending[key] = records.Report(
            cluster=cluster,
            app=report.app,
            revision=report.revision,
            digest=report.bundle_digest,
            generation=report.generation,
            sync=report.sync,
            health=report.health,
            reason=report.reason,
            data=report.SerializeToString(deterministic=True),
            updated_at=time.time(),
        )
        for kind, message in self._agent_events(cluster, report, before):
            self._pending_events.append(
                events.Entry(
                    app=report.app,
                    cluster=cluster,
                    revision=report.revision,
                    previous_revision=before.revision if before else "",
                    cause=types_pb2.CAUSE_AGENT,
                    actor=f"agent:{cluster}",
                    kind=kind,
                    message=message,
                )
            )
        self._flush_later()
        if announce:
            self._announce(cluster, report.app)

    def _flush_later(self, delay: float = 0.2) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush_soon(delay))

    def _agent_events(
        self, cluster: str, report: types_pb2.AppReport, before: types_pb2.AppReport | None
    ) -> list[tuple[str, str]]:
        """The history entries a report makes: `applied` once per bundle the hub assigned and
        the agent then runs; `apply-failed` on a new failure, at most every AGENT_EVENT_GAP
        seconds; `healed` summed over AGENT_EVENT_GAP seconds."""
        key = (cluster, report.app)
        now = time.monotonic()
        seen = self._seen.setdefault(key, _AgentSeen())
        out: list[tuple[str, str]] = []
        assigned = self._assignments.get(cluster, report.app)
        failed = report.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
        moved = before is None or (before.bundle_digest, before.revision) != (
            report.bundle_digest,
            report.revision,
        )
        if failed:
            fresh = moved or before is None or before.sync != report.sync
            if fresh and now - seen.failed_at >= AGENT_EVENT_GAP:
                seen.failed_at = now
                out.append(("apply-failed", report.reason))
        elif (
            moved
            and assigned is not None
            and report.bundle_digest == assigned.digest
            and seen.applied != (report.bundle_digest, report.revision)
        ):
            seen.applied = (report.bundle_digest, report.revision)
            out.append(("applied", f"{status.short(report.revision)} applied on {cluster}"))
        total, last = report.healed_resources, before.healed_resources if before else 0
        seen.healed += total - last if total >= last else total  # smaller: the agent restarted
        if seen.healed and now - seen.healed_at >= AGENT_EVENT_GAP:
            out.append(("healed", _healed(seen.healed)))
            seen.healed, seen.healed_at = 0, now
        elif seen.healed and seen.timer is None:  # told in one entry when the gap is over
            seen.timer = asyncio.get_running_loop().call_later(
                AGENT_EVENT_GAP - (now - seen.healed_at), self._heals_due, cluster, report.app
            )
        return out

    def _heals_due(self, cluster: str, app: str) -> None:
        seen = self._seen.get((cluster, app))
        if seen is None:
            return
        seen.timer = None
        if not seen.healed or self._assignments.get(cluster, app) is None:
            return
        report = self.latest.get((cluster, app))
        self._pending_events.append(
            events.Entry(
                app=app,
                cluster=cluster,
                revision=report.revision if report else "",
                cause=types_pb2.CAUSE_AGENT,
                actor=f"agent:{cluster}",
                kind="healed",
                message=_healed(seen.healed),
            )
        )
        seen.healed, seen.healed_at = 0, time.monotonic()
        self._flush_later()

    async def _flush_soon(self, delay: float) -> None:
        await asyncio.sleep(delay)  # gather what arrives together (a fan-out) into one write
        with contextlib.suppress(errors.StoreUnavailable):  # kept, and tried again
            await self.flush()

    async def flush(self) -> None:
        """Write what agents reported. When the store cannot write, nothing is lost: it is
        kept (newer reports win) and written on a later try, every STORE_RETRY seconds."""
        rows, self._pending = list(self._pending.values()), {}
        entries, self._pending_events = self._pending_events, []
        try:
            if rows:
                await self._db.run(self._db.put_reports, rows)
            recorded = await self._db.run(self._db.record_events, [e.record() for e in entries])
        except errors.StoreUnavailable as e:
            self._pending = {**{(r.cluster, r.app): r for r in rows}, **self._pending}
            self._pending_events = (entries + self._pending_events)[-MAX_PENDING_EVENTS:]
            log.error("agent reports are kept in memory until they can be saved: %s", e)
            self._flush_later(STORE_RETRY)
            raise
        self._recorder.published(recorded)


def _healed(n: int) -> str:
    """A heal entry's words: re-applies of drifted objects since the last such entry."""
    return f"self-healed {n} drifted resource{'s' if n != 1 else ''}"
