"""Rollouts' I/O shell around the pure state machine (hub.rollout): one book per app with a
rollout policy (its newest rollout, every cluster's last good revision, the revisions it
rejected), kept in the store, moved on by agents' reports, connectivity, gate readings and a
one-second clock, and handed to the planner as `planner.Gatekeeping`.

A new head starts a rollout (superseding a running one); a failed rollout reverts the clusters
that took it (onFailure: revert) and rejects the revision for the app until a newer commit or
`rollout retry`; a halted one freezes where it is. Nothing here writes Git. One app's trouble
(a gate that cannot be reached, a state that does not read) is that app's, never the fleet's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping

from fleetops.hub import (
    config,
    errors,
    events,
    fleetstate,
    gates,
    plan,
    planner,
    records,
    rollout,
    rolloutbook,
    rolloutspec,
    status,
    storeapi,
)
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")

# seconds after the hub starts during which a cluster not connected yet is not offline (its
# agent is reconnecting); after that, one whose stream is gone is offline (Deferred) at once
OFFLINE_GRACE = 30.0
TICK = 1.0  # seconds between passes while any rollout is active
MAX_MEASURING = 16  # gate readings in flight at once, fleet-wide
MAX_REJECTED = 100  # rejected revisions an app keeps (the oldest are forgotten first)
Measure = Callable[[rolloutspec.Gate, gates.Subject], Awaitable[gates.Measurement]]


def _proved(report: types_pb2.AppReport | None) -> bool:
    """The report says the revision is in and Healthy: applied in full (an apply that failed
    on one object leaves the others Healthy, and proves nothing) and Healthy."""
    return (
        report is not None
        and report.health == types_pb2.HEALTH_STATUS_HEALTHY
        and report.sync in (types_pb2.SYNC_STATUS_SYNCED, types_pb2.SYNC_STATUS_OUT_OF_SYNC)
        and not report.prune_held
    )


class Rollouts:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        db: storeapi.StoreApi,
        clusters: fleetstate.Clusters,
        assignments: fleetstate.Assignments,
        reports: Mapping[tuple[str, str], types_pb2.AppReport],
        recorder: events.Recorder,
        connected: Callable[[str], bool],
        replan: Callable[[], Awaitable[object]],
        announce: Callable[[str, str], None] = lambda cluster, app: None,
        pinned: Callable[[str, str], str] = lambda app, cluster: "",
        frozen: Callable[[str], str] = lambda app: "",
        measure: Measure | None = None,
        now: Callable[[], float] = time.time,
        offline_grace: float = OFFLINE_GRACE,
    ) -> None:
        self._settings = settings
        self._db = db
        self._clusters = clusters
        self._assignments = assignments
        self._reports = reports
        self._recorder = recorder
        self._connected = connected
        self._replan = replan
        self._announce = announce  # (cluster, app): its cell's rollout gate reads differently
        self._pinned = pinned  # (app, cluster) -> the pin that holds it ('' none)
        self._frozen = frozen  # app -> why nobody can be given a revision now ('' nothing)
        self._measure: Measure = measure or (lambda g, s: gates.measure(g, s, now=now))
        self.now = now
        self.books: dict[str, rolloutbook.Book] = {}
        self._saved: dict[str, str] = {}  # app -> the JSON last written
        self._lock = asyncio.Lock()
        self._poked = asyncio.Event()
        self._measuring: set[tuple[str, str, str]] = set()  # (app, cluster, gate)
        self._slots = asyncio.Semaphore(MAX_MEASURING)
        self._tasks: set[asyncio.Task[None]] = set()
        self.started = now()
        self._grace = offline_grace
        # reports taken since this hub started: a stored one is no news about health
        self._fresh: set[tuple[str, str]] = set()  # (cluster, app)
        self._unsaved: set[str] = set()  # apps whose book changed and is not stored yet
        self._replan_due = False  # a rollout moved: assignments must follow
        self._unrecorded: list[events.Entry] = []  # history the store could not take yet
        self._wake = 0.0  # when a rollout's clock runs out next

    # ------------------------------------------------------------ loading and saving

    def load(self, stored: list[records.Rollout]) -> None:
        for r in stored:
            try:
                self.books[r.app] = rolloutbook.Book.from_json(r.data)
                self._saved[r.app] = r.data
            except (ValueError, TypeError, KeyError, AttributeError) as e:  # starts afresh
                log.error(
                    "app %s: its stored rollout does not read (%s); starting afresh", r.app, e
                )

    async def _save(self, app: str) -> None:
        book = self.books.get(app)
        if book is None:
            return
        text = book.to_json()
        if self._saved.get(app) == text:
            return
        await self._db.run(
            self._db.put_rollout, records.Rollout(app=app, data=text, updated_at=self.now())
        )
        self._saved[app] = text

    # ------------------------------------------------------------ what the planner reads

    def gatekeeping(self) -> dict[str, planner.Gatekeeping]:
        """App -> what its rollout allows, for every app with a rollout policy."""
        out: dict[str, planner.Gatekeeping] = {}
        for app in self._settings.cfg.apps:
            if app.rollout is None:
                continue
            book = self.books.get(app.name) or rolloutbook.Book()
            state = book.state
            out[app.name] = planner.Gatekeeping(
                revision=state.revision if state is not None else "",
                admitted=state.admitted() if state is not None else frozenset(),
                reverts=dict(book.reverts),
                rejected=frozenset(book.rejected),
                stable=book.stable,
            )
        return out

    # ------------------------------------------------------------ facts

    def _online(self, name: str, now: float) -> bool:
        return self._connected(name) or now - self.started < self._grace

    def facts(self, app: config.App, now: float) -> dict[str, rollout.Facts]:
        """Every cluster the app targets, as the state machine sees it; a pinned cluster is
        left out (pins beat rollouts: it runs its pin, and rejoins when unpinned)."""
        cfg = self._settings.cfg
        policy = app.rollout
        assert policy is not None
        groups = {g.name: g for g in cfg.cluster_groups}
        out: dict[str, rollout.Facts] = {}
        for name in self._clusters.names():
            labels = self._clusters.labels_of(cfg, name)
            if plan.target_for(cfg, app, name, labels) is None or self._pinned(app.name, name):
                continue
            row = self._assignments.get(name, app.name)
            report = self._reports.get((name, app.name))
            text = ""
            if report is not None:
                sync = types_pb2.SyncStatus.Name(report.sync).removeprefix("SYNC_STATUS_")
                health = types_pb2.HealthStatus.Name(report.health).removeprefix("HEALTH_STATUS_")
                text = f"{sync} {health}" + (f": {report.reason}" if report.reason else "")
            out[name] = rollout.Facts(
                step=policy.step_of(name, labels, groups),
                online=self._online(name, now),
                assigned=row.revision if row is not None else "",
                generation=row.generation if row is not None else 0,
                applied=report.revision if report is not None else "",
                report_generation=report.generation if report is not None else 0,
                healthy=_proved(report),
                fresh=(name, app.name) in self._fresh,
                status=text[:300],
            )
        return out

    # ------------------------------------------------------------ starting rollouts

    async def prepare(self, *, apps: list[config.App], heads: Mapping[str, str]) -> None:
        """Before planning: a head no rollout has seen yet starts one (superseding a running
        rollout of an older revision); a rejected head starts nothing."""
        entries: list[events.Entry] = []
        async with self._lock:
            now = self.now()
            for app in apps:
                if app.rollout is None or not app.sync.auto or self._frozen(app.name):
                    continue
                head = heads.get(app.repo, "")
                book = self.books.setdefault(app.name, rolloutbook.Book())
                state = book.state
                if not head or head in book.rejected:
                    continue
                if state is not None and state.revision == head:
                    continue
                try:
                    entries += self._start(app, book, head, now)
                    self._unsaved.add(app.name)
                    await self._save(app.name)
                except errors.StoreUnavailable:
                    raise
                except Exception as e:  # that app keeps what it has
                    log.exception("app %s: starting a rollout failed", app.name)
                    entries.append(self._entry(app.name, head, status.unexpected("rollout", e)))
        await self._recorder.record_all(entries)

    def _start(
        self, app: config.App, book: rolloutbook.Book, head: str, now: float
    ) -> list[events.Entry]:
        assert app.rollout is not None
        facts = self.facts(app, now)
        if not facts:  # no cluster to prove it on yet: it starts when one registers
            return []
        out: list[events.Entry] = []
        old = book.state
        if old is not None and old.phase in rollout.ACTIVE + (rollout.HALTED,):
            for name, c in old.clusters.items():  # what passed its step is good there
                if c.took and c.phase == rollout.PASSED:
                    book.last_good[name] = old.revision
            old.phase = rollout.SUPERSEDED
            out.append(
                self._entry(
                    app.name,
                    old.revision,
                    f"rollout of {status.short(old.revision)} superseded by "
                    f"{status.short(head)}: the newer commit starts again from the first step",
                )
            )
        state, notes = rollout.start(app=app.name, revision=head, facts=facts, now=now)
        book.state = state  # reverts not applied yet stay until the new rollout admits them
        notes += rollout.advance(
            state, policy=app.rollout, gates=self._gates(), facts=facts, now=now
        )
        out += [self._entry(app.name, head, n.message, n.cluster) for n in notes]
        out += self._settle(app.name, book)
        for name in state.clusters:
            self._announce(name, app.name)
        return out

    # ------------------------------------------------------------ moving rollouts on

    def poke(self, app: str = "") -> None:
        """Something an active rollout may care about changed (a report, a reading)."""
        book = self.books.get(app) if app else None
        if not app or (book is not None and book.state is not None):
            self._poked.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Move every active rollout on: at once when poked, else every TICK."""
        try:
            while not stop.is_set():
                # at the latest a TICK from now, earlier when a bake or deadline ends sooner
                wait = min(TICK, max(0.02, self._wake - self.now() + 0.01))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), timeout=wait)
                self._poked.clear()
                await self.tick()
        finally:
            for task in list(self._tasks):
                task.cancel()

    def took_report(self, cluster: str, app: str) -> None:
        """An agent reported (cluster, app) to this hub: its health is news."""
        self._fresh.add((cluster, app))
        self.poke(app)

    async def tick(self) -> None:
        """Move every active rollout on; store what changed, record what happened and
        replan when a rollout moved. What the store could not take is kept and tried again
        next tick, so a moment of a full disk loses no move and no history."""
        async with self._lock:
            now = self.now()
            for app in self._settings.cfg.apps:
                book = self.books.get(app.name)
                if app.rollout is None or book is None or book.state is None:
                    continue
                state = book.state
                if rollout.pending(state):  # succeeded: clusters that were away catch up
                    self._catch_up(app, book, now)
                    continue
                if state.phase not in rollout.ACTIVE:
                    continue
                why = self._frozen(app.name) or ("" if app.sync.auto else "auto-sync is off")
                if why:  # nobody can be given it now: the clocks stand still
                    if not state.frozen_at:
                        rollout.freeze(state, now)
                        state.reason = f"frozen: {why}"
                        self._unsaved.add(app.name)
                    continue
                if state.frozen_at:
                    rollout.thaw(state, now)
                    state.reason = ""
                try:
                    got, moved, changed = self._advance(app, book, now)
                except Exception as e:  # that app's rollout stands still, said once
                    log.exception("app %s: moving the rollout on failed", app.name)
                    state.phase = rollout.HALTED
                    state.reason = status.unexpected("rollout", e)
                    got, moved = [self._entry(app.name, state.revision, state.reason)], False
                    changed = True
                self._unrecorded += got
                self._replan_due = self._replan_due or moved
                if changed:
                    self._unsaved.add(app.name)
            self._wake = min(
                (
                    rollout.wake_at(b.state, a.rollout)
                    for a in self._settings.cfg.apps
                    if a.rollout is not None
                    and (b := self.books.get(a.name)) is not None
                    and b.state is not None
                ),
                default=math.inf,
            )
            for name in sorted(self._unsaved):
                try:
                    await self._save(name)
                except errors.StoreUnavailable:
                    log.warning("app %s: the rollout's state cannot be stored now", name)
                    break
                self._unsaved.discard(name)
        if self._unrecorded:
            entries, self._unrecorded = self._unrecorded, []
            try:
                await self._recorder.record_all(entries)
            except errors.StoreUnavailable:
                self._unrecorded = entries[-10_000:] + self._unrecorded
        if self._replan_due:
            self._replan_due = False
            try:
                await self._replan()
            except Exception:
                self._replan_due = True  # tried again next tick
                log.exception("planning after a rollout moved failed; trying again")

    def _catch_up(self, app: config.App, book: rolloutbook.Book, now: float) -> None:
        state = book.state
        assert state is not None
        phases = {n: (c.phase, c.reason) for n, c in state.clusters.items()}
        notes = rollout.catch_up(state, facts=self.facts(app, now))
        for name, c in state.clusters.items():
            if phases.get(name) != (c.phase, c.reason):
                self._announce(name, app.name)
                self._unsaved.add(app.name)
        for n in notes:
            self._unrecorded.append(self._entry(app.name, state.revision, n.message, n.cluster))
            book.last_good[n.cluster] = state.revision

    def _advance(
        self, app: config.App, book: rolloutbook.Book, now: float
    ) -> tuple[list[events.Entry], bool, bool]:
        """One app: (history entries, whether assignments must change, whether its book
        changed at all: only then is it stored)."""
        state = book.state
        policy = app.rollout
        assert state is not None and policy is not None
        before = (state.admitted(), state.phase)
        phases = {n: (c.phase, c.reason) for n, c in state.clusters.items()}
        notes = rollout.advance(
            state, policy=policy, gates=self._gates(), facts=self.facts(app, now), now=now
        )
        changed = bool(notes) or state.phase != before[1] or len(phases) != len(state.clusters)
        for name, c in state.clusters.items():
            if phases.get(name) != (c.phase, c.reason) or state.phase != before[1]:
                self._announce(name, app.name)
                changed = True
        out = [self._entry(app.name, state.revision, n.message, n.cluster) for n in notes]
        out += self._settle(app.name, book)
        self._measure_due(app, book, now)
        return out, (state.admitted(), state.phase) != before, changed

    def _settle(self, app: str, book: rolloutbook.Book) -> list[events.Entry]:
        """A rollout that just ended: a failure reverts (onFailure: revert), a success makes
        its revision every passed cluster's last good one."""
        state = book.state
        assert state is not None
        if state.phase == rollout.FAILED_ROLLOUT and state.revision not in book.rejected:
            return self._revert(app, book, why=state.reason, actor="rollout")
        if state.phase == rollout.SUCCEEDED and book.stable != state.revision:
            for name, c in state.clusters.items():
                if c.took and c.phase == rollout.PASSED:
                    book.last_good[name] = state.revision
            book.reverts = {}  # every cluster runs what this rollout gave it now
            for name in [n for n in book.last_good if n not in self._clusters]:
                del book.last_good[name]  # removed clusters are not remembered
            book.stable = state.revision
        return []

    def _revert(
        self, app: str, book: rolloutbook.Book, *, why: str, actor: str
    ) -> list[events.Entry]:
        state = book.state
        assert state is not None
        back, stuck = rollout.revert_targets(
            state, last_good=book.last_good, rejected=book.rejected
        )
        book.reverts = back
        book.rejected[state.revision] = why[:500]
        for old in list(book.rejected)[:-MAX_REJECTED]:
            del book.rejected[old]
        out = [
            self._entry(
                app,
                state.revision,
                f"{status.short(state.revision)} rejected for app {app}: {why}; auto-sync, "
                f"rollouts and image automation skip it until a newer commit or "
                f"`fleetops-hub rollout retry {app}`",
                actor=actor,
            )
        ]
        for name, rev in sorted(back.items()):
            out.append(
                self._entry(
                    app,
                    rev,
                    f"{name} reverted from {status.short(state.revision)} to its last good "
                    f"revision {status.short(rev)}",
                    name,
                    actor=actor,
                    previous=state.revision,
                )
            )
        for name in stuck:
            out.append(
                self._entry(
                    app,
                    state.revision,
                    f"{name} keeps {status.short(state.revision)}: it ran nothing of this app "
                    "before, so there is nothing to go back to",
                    name,
                    actor=actor,
                )
            )
        return out

    def _gates(self) -> dict[str, rolloutspec.Gate]:
        return {g.name: g for g in self._settings.cfg.gates}

    # ------------------------------------------------------------ gate readings

    def _measure_due(self, app: config.App, book: rolloutbook.Book, now: float) -> None:
        state, policy = book.state, app.rollout
        assert state is not None and policy is not None
        gate_defs = self._gates()
        for cluster, gate_name in rollout.due(state, policy, gate_defs, now):
            key = (app.name, cluster, gate_name)
            if key in self._measuring:
                continue
            c = state.clusters[cluster]
            subject = gates.Subject(
                app=app.name,
                revision=state.revision,
                cluster=cluster,
                step=policy.steps[c.step].name,
            )
            self._measuring.add(key)
            task = asyncio.ensure_future(self._take(key, gate_defs[gate_name], subject))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _take(
        self, key: tuple[str, str, str], gate: rolloutspec.Gate, subject: gates.Subject
    ) -> None:
        app, cluster, _ = key
        try:
            async with self._slots:
                try:
                    got = await self._measure(gate, subject)
                except Exception as e:  # an answer nobody planned for: an error reading
                    log.exception("app %s cluster %s: gate %s", app, cluster, gate.name)
                    got = gates.Measurement(
                        gate=gate.name,
                        cluster=cluster,
                        verdict="error",
                        value=None,
                        message=f"{gate.name}: the answer could not be read ({type(e).__name__})",
                        at=self.now(),
                    )
            async with self._lock:
                book = self.books.get(app)
                state = book.state if book is not None else None
                if state is not None and state.revision == subject.revision:
                    self._unsaved.add(app)
                    rollout.record(
                        state,
                        cluster=cluster,
                        gate=gate,
                        reading=rollout.Reading(got.verdict, got.value, got.message, got.at),
                    )
        except Exception:  # a reading that could not be taken is tried again next interval
            log.exception("app %s cluster %s: measuring gate %s failed", app, cluster, gate.name)
        finally:
            self._measuring.discard(key)
            self.poke(app)

    # ------------------------------------------------------------ operators

    async def control(self, *, app: config.App, action: str, actor: str) -> records.Event:
        """pause | resume | promote | abort | retry: the history entry saying what happened."""
        async with self._lock:
            book = self.books.setdefault(app.name, rolloutbook.Book())
            state = book.state
            said = rolloutbook.control(app, book, action=action, actor=actor)
            entries = [self._entry(app.name, state.revision if state else "", said, actor=actor)]
            if action == "abort" and state is not None and state.phase == rollout.ABORTED:
                entries += self._revert(app.name, book, why=f"aborted by {actor}", actor=actor)
            await self._save(app.name)
        recorded = await self._recorder.record_all(entries)
        self.poke(app.name)
        await self._replan()
        return recorded[0]

    def _entry(
        self,
        app: str,
        revision: str,
        message: str,
        cluster: str = "",
        *,
        actor: str = "rollout",
        previous: str = "",
    ) -> events.Entry:
        return events.Entry(
            kind="rollout",
            message=message,
            actor=actor,
            cause=types_pb2.CAUSE_ROLLOUT_GATE,
            app=app,
            cluster=cluster,
            revision=revision,
            previous_revision=previous,
        )

    def book(self, app: str) -> rolloutbook.Book | None:
        return self.books.get(app)
