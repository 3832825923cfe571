"""`fleetops-agent run`: the agent as a long-lived process connected to the hub.

Its long-running loops run under `proto.supervise.Supervisor` (an error is logged with its
traceback and the loop starts again after a backoff, 1 s doubling to a minute): the hub
connection (`agent.session`), the app workers (here), the resync ticker, certificate renewal
(`agent.renewal`), keeping the identity in its Secret, and the /healthz server
(`agent.probes`). No failure of one of them stops
the agent: it ends only on SIGTERM/SIGINT, so `fleetops-agent run` exits 0 only then.

Apps are reconciled by workers, one task per app and at most `workers` apps at once, so an app
waiting for a wave to get healthy (up to --wave-timeout) holds one slot, never the other apps'
syncs and reports. An app is never reconciled twice at the same time: dirtied while it runs, it
runs once more after. Every reconcile ends in a report, failures included (a refused namespace,
an API server that does not answer: ApplyFailed with the reason); one that could not look at
anything is tried again soon, with backoff.

Drift is seen as it happens: the agent watches the objects each app manages (`agent.watch`),
and a change to one of them (a version not last seen in sync) makes that app's worker check it
at once: only what changed is dry-run, and self-healed when the policy says so. The resync
timer stays as a safety net (every `resync` seconds, 300 by default with watches on).

The hub being gone stops nothing but the connection: the workers keep reconciling and
self-healing the assignments kept on disk, and the latest reports go up in the Hello of the
next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from fleetops.agent import (
    credentials,
    errors,
    health,
    ids,
    keystore,
    kube,
    manifests,
    probes,
    reconcile,
    renewal,
    session,
    state,
    watch,
)
from fleetops.agent import status as st
from fleetops.proto import supervise
from fleetops.proto.v1 import agent_pb2, types_pb2

log = logging.getLogger("fleetops.agent")
WORKERS = 4  # apps reconciled at once
# The longest wait before looking again at an app still rolling out or that could not reach
# the API server: the resync is long now (watches see drift), a recovery must not wait for it.
FOLLOW_UP_MAX = 30.0


def _same(a: types_pb2.AppReport | None, b: types_pb2.AppReport) -> bool:
    if a is None:
        return False
    x, y = types_pb2.AppReport(), types_pb2.AppReport()
    x.CopyFrom(a)
    y.CopyFrom(b)
    for r in (x, y):
        r.ClearField("observed_at")
        r.ClearField("applied_at")
    return x == y  # healed_resources is a running total: a new heal is a new report


class Runner:
    def __init__(
        self,
        *,
        address: str,
        me: credentials.Identity,
        client: kube.Kube,
        local: state.LocalState,
        options: reconcile.Options,
        resync: float,
        labels: dict[str, str],
        health_listen: str = "",
        identity_secret: str = "",
        clock: renewal.Clock | None = None,
        workers: int = WORKERS,
        stop: asyncio.Event | None = None,
        watching: bool = True,
    ) -> None:
        self.address = address
        self.identity_secret = identity_secret  # NAMESPACE/NAME: renewals are kept there too
        self.clock = clock
        self.health_listen = health_listen
        self.me = me
        self.kube = client
        self.local = local
        # the cluster's name lets a held prune say which `fleetops-hub sync` allows it
        self.rec = reconcile.Reconciler(client, dataclasses.replace(options, cluster=me.cluster))
        self.resync = resync
        self.labels = labels
        self.stop = stop or asyncio.Event()
        self.connected = asyncio.Event()
        self.reports: dict[str, types_pb2.AppReport] = {}
        self._dirty: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        # heals per app since this agent started, sent as a running total: a report lost on a
        # dead stream loses no heal, the next one (or the Hello) carries the total
        self._heals: dict[str, int] = {}
        self._backoff: dict[str, float] = {}
        self._slots = asyncio.Semaphore(max(1, workers))
        self._running: dict[str, asyncio.Task[None]] = {}  # app -> its worker
        self._again: set[str] = set()  # dirtied while running: once more after
        self._retry: set[str] = set()  # an operator asked for a sync: retry a failed one
        self._must: set[str] = set()  # queued by more than watch events
        # watch events (key, live) that queued an app, looked at again when it runs
        self._events: dict[str, list[tuple[manifests.Key, dict[str, Any] | None]]] = {}
        self.supervisor = supervise.Supervisor(self.stop)
        self._resyncing: set[str] = set()  # queued by the resync timer: a counted check
        self.watches = watch.Watches(client, self._changed) if watching else None
        self.woken = 0  # apps queued by a watch event, for tests and benchmarks
        self.hub = session.HubSession(
            address=address,
            identity=lambda: self.me,
            client=client,
            local=local,
            labels=labels,
            reports=self.reports,
            enqueue=self.enqueue,
            sync_now=self.sync_now,
            stop=self.stop,
            connected=self.connected,
        )
        self.probes = probes.Probes(
            listen=health_listen,
            hub=address,
            stop=self.stop,
            connected=self.connected,
            tasks=self._tasks_text,
        )

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Until `stop` is set. Raises only when it cannot start (e.g. --health-listen)."""
        for stored in self.local.load_all():  # offline first: what we had keeps running
            self.enqueue(stored.assignment.app)
        if self.health_listen:
            await self.probes.bind()  # a bad address ends the agent at once
        loops = {
            "hub connection": self.hub.run,
            "app workers": self.workers,
            "resync": self._resync_loop,
            "certificate renewal": self._renewal,
        }
        if self.watches is not None:
            loops["watches"] = self.watches.run
        if self.identity_secret:
            loops["identity secret"] = self._keep_identity
        if self.health_listen:
            loops["health server"] = self.probes.serve
        for name, factory in loops.items():
            self.supervisor.start(name, factory)
        log.info(
            "supervising %s (a loop that fails is logged and restarted with backoff)",
            ", ".join(loops),
        )
        await self.stop.wait()
        await self.supervisor.stop()  # cancelling the workers loop cancels the apps' workers

    async def _keep_identity(self) -> None:
        """Keep the identity in its Secret once (a pod restarted with an empty --state finds it
        there); retried by the supervisor while the API server refuses or does not answer."""
        await keystore.keep(self.local.root, self.kube, secret=self.identity_secret)
        log.info("identity kept in Secret %s", self.identity_secret)

    async def _renewal(self) -> None:
        """Renew the certificate before it expires. The stream that is up stays up on the
        old certificate; the next connection uses the new one (credentials are built from
        `self.me` on every dial)."""

        def renewed(me: credentials.Identity) -> None:
            self.me = me

        await renewal.keep_renewed(
            state=self.local.root,
            address=self.address,
            current=lambda: self.me,
            renewed=renewed,
            stop=self.stop,
            clock=self.clock,
            client=self.kube,
            secret=self.identity_secret,
        )

    def _tasks_text(self) -> str:
        return "".join(
            f"{t.name}: {'running' if t.running else 'restarting'}, restarts {t.restarts}"
            + (f", last error: {t.last_error}" if t.last_error else "")
            + "\n"
            for t in self.supervisor.states.values()
        )

    def sync_now(self, app: str) -> None:
        """The hub relayed an operator's sync: reconcile now, re-running a sync a hook
        failed."""
        self._retry.add(app)
        self.enqueue(app)

    def enqueue(self, app: str) -> None:
        self._must.add(app)  # anything but a watch event: reconcile whatever the events say
        self._queue(app)

    def _queue(self, app: str) -> None:
        if app not in self._queued:
            self._queued.add(app)
            self._dirty.put_nowait(app)

    def _changed(self, app: str, key: manifests.Key, live: dict[str, Any] | None) -> None:
        """A watch saw a managed object change (None: deleted): check its app now, unless it
        is the very version last seen in sync (our own apply, a relist). The event of our own
        apply may arrive before that apply is remembered: such an event is looked at again
        when its app's turn comes (`_only_our_own`)."""
        if live is not None and self.rec.unchanged(app, key=key, live=live):
            return
        self.woken += 1
        self._events.setdefault(app, []).append((key, live))
        self._queue(app)

    def _only_our_own(self, app: str) -> bool:
        """The app was queued only by watch events, and each is now known as a version last
        seen in sync (our own heal or apply, remembered since): no check is needed."""
        events = self._events.pop(app, [])
        if app in self._must or not events:
            return False
        return all(
            live is not None and self.rec.unchanged(app, key=key, live=live) for key, live in events
        )

    # ------------------------------------------------------------ reconciling

    async def _resync_loop(self) -> None:
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.resync)
            except TimeoutError:
                present = set()
                for stored in self.local.load_all():
                    present.add(stored.assignment.app)
                    self._resyncing.add(stored.assignment.app)
                    self.enqueue(stored.assignment.app)
                for app in self.watches.apps() if self.watches is not None else ():
                    if app not in present:  # no longer assigned: its worker stops watching it
                        self.enqueue(app)

    async def workers(self) -> None:
        """Hand each dirty app to a worker of its own, at most `workers` at once, until
        cancelled (which cancels the apps' workers too). Runs without a hub connection."""
        try:
            while not self.stop.is_set():
                app = await self._dirty.get()
                self._queued.discard(app)
                if app in self._running:
                    self._again.add(app)
                    continue
                await self._slots.acquire()
                self._running[app] = asyncio.create_task(self._work(app), name=f"app {app}")
        except asyncio.CancelledError:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _work(self, app: str) -> None:
        try:
            await self._reconcile_app(app)
        except Exception:  # one app's failure must not stop the others
            log.exception("app %s: reconcile failed", app)
        finally:
            self._running.pop(app, None)
            self._slots.release()
            if app in self._again:
                self._again.discard(app)
                self._queue(app)  # as it was queued: by watch events only, or not

    async def _reconcile_app(self, app: str) -> None:
        if self._only_our_own(app):
            return
        self._must.discard(app)
        try:
            stored = self.local.load(app)
        except errors.StateError as e:
            log.error("%s", e)
            return
        if stored is None:
            self.rec.forget(app)
            if self.watches is not None:
                self.watches.track(ids.AppName(app), {})
            return
        a = stored.assignment
        bundle = types_pb2.Bundle()
        bundle.CopyFrom(stored.bundle)
        bundle.revision = a.revision
        # With watches on, only the resync timer's checks count towards a full dry-run pass.
        counted = self.watches is None or app in self._resyncing
        self._resyncing.discard(app)
        with contextlib.nullcontext() if counted else self.rec.uncounted(app):
            if a.paused:
                result = await self.rec.check(bundle, a.policy, allow_mass_prune=a.allow_mass_prune)
            else:
                retry = app in self._retry
                self._retry.discard(app)
                result = await self.rec.reconcile(
                    bundle, a.policy, allow_mass_prune=a.allow_mass_prune, retry=retry
                )
        self._follow_up(app, result)
        if self.watches is not None:
            self.watches.track(ids.AppName(app), self.rec.managed(app))
        report = st.to_report(result, generation=a.generation)
        self._heals[app] = self._heals.get(app, 0) + report.healed_resources
        report.healed_resources = self._heals[app]
        if not _same(self.reports.get(app), report):
            self.reports[app] = report
            self.hub.send(agent_pb2.AgentMessage(report=report))
            log.log(
                logging.WARNING if result.failed else logging.INFO,
                "app %s %s: %s %s: %s",
                app,
                a.revision[:8],
                st.sync_name(result.sync),
                health.name(result.health),
                result.reason,
            )

    def _follow_up(self, app: str, result: st.AppResult) -> None:
        """While an app is still rolling out, or the API server did not answer, look again
        soon (0.5 s, doubling up to 30 s or the resync interval) so its health reaches the hub
        when it changes, not a resync later."""
        if (
            result.health != health.PROGRESSING
            and result.sync != st.APPLYING
            and not result.retry_soon
        ):
            self._backoff.pop(app, None)
            return
        delay = self._backoff.get(app, 0.25) * 2
        self._backoff[app] = min(delay, self.resync, FOLLOW_UP_MAX)
        loop = asyncio.get_running_loop()
        loop.call_later(self._backoff[app], self.enqueue, app)
