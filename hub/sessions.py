"""Agent sessions: one stream per connected cluster, what is sent down it (the cluster's full
assignment set, small bundles inline, sync nudges), connectivity (Connected, Disconnected
since T with why), and the watchdog that ends streams that went quiet.

Never plans and never reads reports: a connect asks `replan` for the cluster and hands the
Hello's reports to `take_report`; what changes is told to `view`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from fleetops.hub import errors, fleetstate, rendercache, reports, storeapi
from fleetops.proto.v1 import agent_pb2, types_pb2

log = logging.getLogger("fleetops.hub")
AGENT_SILENCE = 25.0  # seconds without a message (agents send one every 10 s): Disconnected
INLINE_BUDGET = 1024 * 1024  # all inline bundles of one Assignments message together


class View(Protocol):
    """What sessions tell the fleet view."""

    def cluster_changed(self, cluster: str) -> None: ...

    def cells_changed(self, cluster: str) -> None: ...


@dataclasses.dataclass
class Stream:
    """One connected agent: what to send it, when it was last heard, why it ended."""

    cluster: str
    outbox: asyncio.Queue[agent_pb2.HubMessage]
    heard: float = dataclasses.field(default_factory=time.monotonic)
    ended: str = ""  # why the hub ended it ("" until it does)

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = reason
            self.outbox.put_nowait(agent_pb2.HubMessage())  # the servicer's signal to stop


class Sessions:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        db: storeapi.StoreApi,
        clusters: fleetstate.Clusters,
        assignments: fleetstate.Assignments,
        renders: rendercache.RenderCache,
        view: View,
        replan: Callable[[str], Awaitable[set[str]]],
        take_report: Callable[[str, types_pb2.AppReport], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._db = db
        self._clusters = clusters
        self._assignments = assignments
        self._renders = renders
        self._view = view
        self._replan = replan
        self._take_report = take_report
        self.streams: dict[str, Stream] = {}

    def connected(self, cluster: str) -> bool:
        return cluster in self.streams

    def end(self, cluster: str, reason: str, *, forget: bool = False) -> None:
        """End the cluster's stream (if any) with `reason`; `forget`: drop it at once."""
        stream = self.streams.pop(cluster, None) if forget else self.streams.get(cluster)
        if stream is not None:
            stream.end(reason)

    # ------------------------------------------------------------ down the stream

    def assignments_for(self, cluster: str) -> agent_pb2.Assignments:
        msg = agent_pb2.Assignments()
        budget = INLINE_BUDGET
        cfg = self._settings.cfg
        for _app, row in sorted(self._assignments.of(cluster).items()):
            app = cfg.app(row.app)
            allowed: dict[str, Any] = dict(row.policy)  # SyncPolicy field name -> value
            a = msg.assignments.add(
                app=row.app,
                revision=row.revision,
                bundle_digest=row.digest,
                namespace=row.namespace,
                policy=types_pb2.SyncPolicy(**allowed),
                generation=row.generation,
                paused=row.paused,
                depends_on=list(app.depends_on) if app else [],
                allow_mass_prune=bool(row.allow_mass_prune) and row.allow_mass_prune == row.digest,
            )
            inline = self._renders.inline(row.digest)
            if inline is not None:
                a.bundle_size = inline.ByteSize()
                # the whole message stays well under gRPC's limits: what does not fit inline
                # is fetched by digest (GetBundle, in chunks)
                if budget >= a.bundle_size:
                    a.bundle.CopyFrom(inline)
                    budget -= a.bundle_size
        return msg

    def push_assignments(self, cluster: str) -> None:
        stream = self.streams.get(cluster)
        if stream is not None:
            stream.outbox.put_nowait(
                agent_pb2.HubMessage(assignments=self.assignments_for(cluster))
            )

    def nudge(self, app: str, cluster: str) -> None:
        """Ask the agents of `app` (on `cluster`, or every cluster) to reconcile it now."""
        for row in self._assignments.all():
            if row.app == app and (not cluster or row.cluster == cluster):
                stream = self.streams.get(row.cluster)
                if stream is not None:
                    stream.outbox.put_nowait(
                        agent_pb2.HubMessage(sync_now=agent_pb2.SyncNow(app=app))
                    )

    def may_read_bundle(self, cluster: str, digest: str) -> bool:
        return any(row.digest == digest for row in self._assignments.of(cluster).values())

    # ------------------------------------------------------------ connectivity

    async def connect(self, cluster: str, hello: agent_pb2.Hello) -> Stream:
        row = self._clusters.row(cluster)
        if row is None:
            raise errors.PermissionDenied(f"cluster {cluster} is not registered (was it removed?)")
        old = self.streams.get(cluster)
        if old is not None:
            old.end("replaced by a newer connection")
        stream = Stream(cluster, asyncio.Queue())
        self.streams[cluster] = stream
        try:
            await self._connected(cluster, row, hello)
        except BaseException:  # never leave a stream entry that shows the cluster connected
            if self.streams.get(cluster) is stream:
                del self.streams[cluster]
            raise
        return stream

    async def _connected(
        self, cluster: str, row: fleetstate.Cluster, hello: agent_pb2.Hello
    ) -> None:
        row.agent_version = reports.text(hello.agent_version, 100)
        row.kubernetes_version = reports.text(hello.kubernetes_version, 100)
        row.facts = reports.clean_facts(dict(hello.labels))
        row.connected, row.last_seen, row.reason = True, time.time(), ""
        await self._save_connectivity(row)
        for report in hello.reports:
            await self._take_report(cluster, report)
        self._view.cluster_changed(cluster)
        pushed = await self._replan(cluster)
        if cluster not in pushed:  # unchanged: it still gets its full set on every connect
            await self._renders.load_inline(
                a.digest for a in self._assignments.of(cluster).values()
            )
            self.push_assignments(cluster)

    async def _save_connectivity(self, row: fleetstate.Cluster) -> None:
        """Connectivity is news, not an acknowledgement: a store that cannot write it does
        not keep an agent out (memory has it; the next write stores it)."""
        try:
            await self._db.run(self._db.put_cluster, row.record())
        except errors.StoreUnavailable as e:
            log.error("cluster %s: connectivity not saved: %s", row.name, e)

    async def disconnect(self, stream: Stream, reason: str) -> None:
        if self.streams.get(stream.cluster) is not stream:
            return
        del self.streams[stream.cluster]
        row = self._clusters.row(stream.cluster)
        if row is None:  # removed while it was connected
            return
        row.connected, row.last_seen, row.reason = False, time.time(), reason
        await self._save_connectivity(row)
        self._view.cluster_changed(stream.cluster)
        self._view.cells_changed(stream.cluster)

    def seen(self, cluster: str) -> None:
        row = self._clusters.row(cluster)
        if row is not None:
            row.last_seen = time.time()
        stream = self.streams.get(cluster)
        if stream is not None:
            stream.heard = time.monotonic()

    async def watch_streams(self, stop: asyncio.Event, *, every: float = 5.0) -> None:
        """End the streams of agents not heard from for AGENT_SILENCE seconds (agents send a
        heartbeat every 10 s), so a partitioned cluster shows Disconnected within two
        heartbeats and a half, whatever the network does with the connection."""
        while not stop.is_set():
            now = time.monotonic()
            for stream in list(self.streams.values()):
                if now - stream.heard > AGENT_SILENCE:
                    stream.end(f"no word from the agent for {AGENT_SILENCE:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)


def chunks(data: bytes, digest: str, size: int = 1024 * 1024) -> Iterable[agent_pb2.BundleChunk]:
    """A bundle as GetBundle sends it: `size` bytes a message."""
    for offset in range(0, max(len(data), 1), size):
        yield agent_pb2.BundleChunk(
            digest=digest, offset=offset, total_size=len(data), data=data[offset : offset + size]
        )
