"""The FleetService servicer: what the TUI and scripts see and do.

Thin: it translates protobuf to calls on one narrow interface, `FleetHub` (the core
implements it), and domain errors to gRPC status codes. Who calls is settled by
`services.AuthInterceptor` before a method runs; the audit actor is the caller's token name
(`FleetHub.actor`), never anything the client asserts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc

from fleetops.hub import enrollment, errors, events, imagestatus, records
from fleetops.hub.services import abort, bearer
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc

MAX_HISTORY = 5000
HEARTBEAT = 10.0  # seconds of quiet on a Watch stream before an empty change is sent
STUCK = 30.0  # seconds a watcher may leave changes unread before its stream is ended
log = logging.getLogger("fleetops.hub")


class FleetHub(Protocol):
    """What the fleet API needs of the hub."""

    def actor(self, bearer: str) -> str: ...

    async def create_registration_token(
        self, *, cluster: str, labels: dict[str, str], ttl: int, actor: str
    ) -> enrollment.Token: ...

    async def create_api_token(
        self, *, name: str, role: str, ttl: float, actor: str
    ) -> tuple[str, records.ApiToken]: ...

    def api_tokens(self) -> list[records.ApiToken]: ...

    async def revoke_api_token(self, *, name: str, actor: str) -> records.Event: ...

    async def remove_cluster(self, *, cluster: str, actor: str) -> records.Event: ...

    def snapshot(self) -> fleet_pb2.Snapshot: ...

    def subscribe(self) -> events.Subscription: ...

    async def sync(
        self, *, app: str, cluster: str, actor: str, allow_mass_prune: bool = False
    ) -> records.Event: ...

    async def rollback(
        self, *, app: str, revision: str, cluster: str, actor: str
    ) -> records.Event: ...

    async def unpin(self, *, app: str, cluster: str, actor: str) -> records.Event: ...

    async def pause(self, *, app: str, reason: str, actor: str, paused: bool) -> records.Event: ...

    async def history(self, *, app: str, cluster: str, limit: int) -> list[records.Event]: ...

    def rollout_status(self, *, app: str) -> list[fleet_pb2.Rollout]: ...

    async def rollout_action(self, *, app: str, action: str, actor: str) -> records.Event: ...

    def image_status(self) -> imagestatus.Status: ...

    def scan_images(self, repository: str = "") -> list[str]: ...


def image_status_pb(st: imagestatus.Status) -> fleet_pb2.ImageStatusResponse:
    """Image automation's status as the fleet API says it (times unset when never)."""
    out = fleet_pb2.ImageStatusResponse()
    for r in st.repositories:
        repo = out.repositories.add(
            name=r.name,
            image=r.image,
            tags=r.tags,
            requests=r.requests,
            error=r.error,
            warning=r.warning,
        )
        if r.last_scan:
            repo.last_scan.CopyFrom(events.timestamp(r.last_scan))
    for p in st.policies:
        out.policies.add(
            name=p.name,
            repository=p.repository,
            latest=p.latest,
            considered=p.considered,
            skipped=p.skipped,
            rejected=p.rejected,
            rejected_tags=p.rejected_tags,
            error=p.error,
        )
    for u in st.updates:
        update = out.updates.add(
            name=u.name,
            repo=u.repo,
            commits=u.commits,
            last_commit=u.last_commit,
            last_changes=u.last_changes,
            problems=u.problems,
            error=u.error,
        )
        if u.last_run:
            update.last_run.CopyFrom(events.timestamp(u.last_run))
    return out


@dataclasses.dataclass
class _Watcher:
    sub: events.Subscription
    task: asyncio.Task[Any]
    sent: float  # when a change last left for this watcher (monotonic)


class FleetService(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, hub: FleetHub) -> None:
        self.hub = hub
        self._watchers: dict[int, _Watcher] = {}
        self._reaper: asyncio.Future[None] | None = None

    def _actor(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The audit actor: the caller's token name, never what the client says it is."""
        return self.hub.actor(bearer(context.invocation_metadata()))

    async def CreateToken(
        self, request: fleet_pb2.CreateTokenRequest, context: Any
    ) -> fleet_pb2.CreateTokenResponse:
        try:
            token = await self.hub.create_registration_token(
                cluster=request.cluster,
                labels=dict(request.labels),
                ttl=request.ttl_seconds,
                actor=self._actor(context),
            )
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        out = fleet_pb2.CreateTokenResponse(token=token.text, ca_pem=token.ca_pem)
        out.expires_at.CopyFrom(events.timestamp(token.expires_at))
        return out

    async def CreateApiToken(
        self, request: fleet_pb2.CreateApiTokenRequest, context: Any
    ) -> fleet_pb2.CreateApiTokenResponse:
        try:
            secret, record = await self.hub.create_api_token(
                name=request.name,
                role=request.role,
                ttl=float(request.ttl_seconds),
                actor=self._actor(context),
            )
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        out = fleet_pb2.CreateApiTokenResponse(token=secret)
        if record.expires_at:
            out.expires_at.CopyFrom(events.timestamp(record.expires_at))
        return out

    async def ListApiTokens(
        self, request: fleet_pb2.ListApiTokensRequest, context: Any
    ) -> fleet_pb2.ListApiTokensResponse:
        out = fleet_pb2.ListApiTokensResponse()
        for t in self.hub.api_tokens():
            item = out.tokens.add(name=t.name, role=t.role, created_by=t.created_by)
            item.created_at.CopyFrom(events.timestamp(t.created_at))
            if t.expires_at:
                item.expires_at.CopyFrom(events.timestamp(t.expires_at))
        return out

    async def RevokeApiToken(
        self, request: fleet_pb2.RevokeApiTokenRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, lambda actor: self.hub.revoke_api_token(name=request.name, actor=actor)
        )

    async def RemoveCluster(
        self, request: fleet_pb2.RemoveClusterRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, lambda actor: self.hub.remove_cluster(cluster=request.cluster, actor=actor)
        )

    async def GetSnapshot(
        self, request: fleet_pb2.SnapshotRequest, context: Any
    ) -> fleet_pb2.Snapshot:
        return self.hub.snapshot()

    async def Watch(
        self, request: fleet_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[fleet_pb2.FleetChange]:
        """A snapshot, then every change; an empty change (a heartbeat) after HEARTBEAT
        seconds of quiet, so a client can tell a quiet hub from a lost one. A client that
        stops reading has its stream ended instead of holding it (see `_reap`)."""
        task = asyncio.current_task()
        assert task is not None
        sub = self.hub.subscribe()
        watcher = _Watcher(sub, task, time.monotonic())
        self._watchers[id(sub)] = watcher
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())
        try:
            snap = self.hub.snapshot()
            yield fleet_pb2.FleetChange(version=snap.version, snapshot=snap)
            watcher.sent = time.monotonic()
            while True:
                try:
                    change = await asyncio.wait_for(sub.next(), HEARTBEAT)
                except TimeoutError:
                    change = fleet_pb2.FleetChange(version=sub.version)
                yield change
                watcher.sent = time.monotonic()
        finally:
            sub.close()
            self._watchers.pop(id(sub), None)

    async def _reap(self) -> None:
        """End the streams of watchers that stopped reading: changes wait for them and
        nothing was delivered for STUCK seconds (or the hub already gave up on them)."""
        while self._watchers:
            await asyncio.sleep(HEARTBEAT / 2)
            now = time.monotonic()
            for w in list(self._watchers.values()):
                if w.sub.dropped or (w.sub.pending and now - w.sent > STUCK):
                    log.warning("a fleet watcher stopped reading; its stream is ended")
                    w.task.cancel()
                    self._watchers.pop(id(w.sub), None)

    async def _action(
        self, context: Any, call: Callable[[str], Awaitable[records.Event]]
    ) -> fleet_pb2.ActionResponse:
        """Run `call(actor)`: its event is the answer, its domain error the status."""
        try:
            ev = await call(self._actor(context))
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        return fleet_pb2.ActionResponse(message=ev.message, event=events.event_pb(ev))

    async def Sync(self, request: fleet_pb2.SyncRequest, context: Any) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            lambda actor: self.hub.sync(
                app=request.app,
                cluster=request.cluster,
                actor=actor,
                allow_mass_prune=request.allow_mass_prune,
            ),
        )

    async def Rollback(
        self, request: fleet_pb2.RollbackRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            lambda actor: self.hub.rollback(
                app=request.app, revision=request.revision, cluster=request.cluster, actor=actor
            ),
        )

    async def Unpin(
        self, request: fleet_pb2.UnpinRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            lambda actor: self.hub.unpin(app=request.app, cluster=request.cluster, actor=actor),
        )

    async def Pause(
        self, request: fleet_pb2.PauseRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            lambda actor: self.hub.pause(
                app=request.app, reason=request.reason, actor=actor, paused=True
            ),
        )

    async def Resume(
        self, request: fleet_pb2.PauseRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            lambda actor: self.hub.pause(
                app=request.app, reason=request.reason, actor=actor, paused=False
            ),
        )

    async def History(
        self, request: fleet_pb2.HistoryRequest, context: Any
    ) -> fleet_pb2.HistoryResponse:
        limit = request.limit if 0 < request.limit <= MAX_HISTORY else 0
        if request.limit > MAX_HISTORY:
            limit = MAX_HISTORY
        found = await self.hub.history(app=request.app, cluster=request.cluster, limit=limit)
        return fleet_pb2.HistoryResponse(events=[events.event_pb(e) for e in found])

    async def RolloutStatus(
        self, request: fleet_pb2.RolloutStatusRequest, context: Any
    ) -> fleet_pb2.RolloutStatusResponse:
        try:
            found = self.hub.rollout_status(app=request.app)
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        return fleet_pb2.RolloutStatusResponse(rollouts=found)

    async def RolloutAction(
        self, request: fleet_pb2.RolloutActionRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            lambda actor: self.hub.rollout_action(
                app=request.app, action=request.action, actor=actor
            ),
        )

    async def ImageStatus(
        self, request: fleet_pb2.ImageStatusRequest, context: Any
    ) -> fleet_pb2.ImageStatusResponse:
        return image_status_pb(self.hub.image_status())

    async def ImageScan(
        self, request: fleet_pb2.ImageScanRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        """Scan one image repository, or every one, now: the scan runs in the image loop and
        its outcome shows in ImageStatus (this answers once it is asked for, not done)."""
        actor = self._actor(context)
        try:
            names = self.hub.scan_images(request.repository)
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        if not names:
            return fleet_pb2.ActionResponse(
                message="hub.yaml has no imageRepositories: nothing to scan"
            )
        log.info("%s asked for a scan of image repositories %s", actor, ", ".join(names))
        return fleet_pb2.ActionResponse(
            message=f"scanning image {'repository' if len(names) == 1 else 'repositories'} "
            f"{', '.join(names)} now; `fleetops-hub images status` shows what it found"
        )
