"""The FleetService servicer: what the TUI and scripts see and do.

Thin: it translates protobuf to calls on `core.Hub` and domain errors to gRPC status codes.
Who calls is settled by `services.AuthInterceptor` before a method runs; the audit actor is
the caller's token name, never anything the client asserts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from fleetops.hub import apitokens, ca, config, core, errors, status, store
from fleetops.hub.services import _abort, caller_of
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

MAX_REGISTRATION_TTL = 30 * 86400  # a registration token is for an install, not a credential
MAX_HISTORY = 5000
HEARTBEAT = 10.0  # seconds of quiet on a Watch stream before an empty change is sent
STUCK = 30.0  # seconds a watcher may leave changes unread before its stream is ended
log = logging.getLogger("fleetops.hub")


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


@dataclasses.dataclass
class _Watcher:
    queue: asyncio.Queue[fleet_pb2.FleetChange]
    task: asyncio.Task[Any]
    sent: float  # when a change last left for this watcher (monotonic)


class FleetService(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, hub: core.Hub, authority: ca.CA, registry: apitokens.Registry) -> None:
        self.hub = hub
        self.ca = authority
        self.registry = registry
        self._watchers: dict[int, _Watcher] = {}
        self._reaper: asyncio.Future[None] | None = None

    def _actor(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The audit actor: the caller's token name, never what the client says it is."""
        return caller_of(context, self.registry).name

    async def CreateToken(
        self, request: fleet_pb2.CreateTokenRequest, context: Any
    ) -> fleet_pb2.CreateTokenResponse:
        # everything is checked before anything is written
        problem = ""
        if not config.DNS_LABEL.match(request.cluster) or len(request.cluster) > 63:
            problem = (
                f"cluster name {request.cluster!r}: use at most 63 lowercase letters, digits, '-'"
            )
        labels = dict(request.labels)
        for key, value in labels.items():
            if not problem and config.label_problem(key, value):
                problem = f"label {key}={value}: {config.label_problem(key, value)}"
        ttl = request.ttl_seconds or 3600
        if not problem and not 0 < ttl <= MAX_REGISTRATION_TTL:
            problem = (
                f"ttl {request.ttl_seconds} s: a registration token may live from 1 s to "
                f"{MAX_REGISTRATION_TTL // 86400} days; make a new one when it runs out"
            )
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        actor = self._actor(context)
        token = ca.new_registration_token(self.ca)
        now = time.time()
        await self.hub.db.run(
            self.hub.db.upsert,
            "tokens",
            {
                "id": token.id,
                "secret_hash": token.secret_hash,
                "cluster": request.cluster,
                "created_at": now,
                "expires_at": now + ttl,
                "used_at": 0.0,
                "labels": store.dumps(labels),
            },
            "id",
        )
        await self.hub.record(
            cluster=request.cluster,
            kind="token-created",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            message=f"registration token {token.id} for cluster {request.cluster}, valid {ttl} s",
        )
        out = fleet_pb2.CreateTokenResponse(token=str(token), ca_pem=self.ca.cert_pem)
        out.expires_at.FromNanoseconds(int((now + ttl) * 1e9))
        return out

    async def CreateApiToken(
        self, request: fleet_pb2.CreateApiTokenRequest, context: Any
    ) -> fleet_pb2.CreateApiTokenResponse:
        actor = self._actor(context)
        try:
            secret, record = await self.registry.create(
                name=request.name,
                role=request.role,
                ttl=float(request.ttl_seconds),
                created_by=actor,
            )
        except errors.HubError as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from None
        until = f", valid until {status.since(record.expires_at)}" if record.expires_at else ""
        await self.hub.record(
            kind="api-token-created",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            message=f"{record.role} API token {record.name!r} created by {actor}{until}",
        )
        out = fleet_pb2.CreateApiTokenResponse(token=secret)
        if record.expires_at:
            out.expires_at.CopyFrom(_ts(record.expires_at))
        return out

    async def ListApiTokens(
        self, request: fleet_pb2.ListApiTokensRequest, context: Any
    ) -> fleet_pb2.ListApiTokensResponse:
        out = fleet_pb2.ListApiTokensResponse()
        for t in self.registry.list():
            item = out.tokens.add(name=t.name, role=t.role, created_by=t.created_by)
            item.created_at.CopyFrom(_ts(t.created_at))
            if t.expires_at:
                item.expires_at.CopyFrom(_ts(t.expires_at))
        return out

    async def RevokeApiToken(
        self, request: fleet_pb2.RevokeApiTokenRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        actor = self._actor(context)

        async def revoke() -> store.Event:
            await self.registry.revoke(request.name)
            return await self.hub.record(
                kind="api-token-revoked",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"API token {request.name!r} revoked by {actor}",
            )

        return await self._action(context, revoke())

    async def RemoveCluster(
        self, request: fleet_pb2.RemoveClusterRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, self.hub.remove_cluster(request.cluster, self._actor(context))
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
        queue: asyncio.Queue[fleet_pb2.FleetChange] = asyncio.Queue()
        task = asyncio.current_task()
        assert task is not None
        watcher = _Watcher(queue, task, time.monotonic())
        self._watchers[id(queue)] = watcher
        self.hub.watchers.add(queue)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())
        try:
            snap = self.hub.snapshot()
            yield fleet_pb2.FleetChange(version=snap.version, snapshot=snap)
            watcher.sent = time.monotonic()
            while True:
                try:
                    change = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except TimeoutError:
                    change = fleet_pb2.FleetChange(version=self.hub.version)
                yield change
                watcher.sent = time.monotonic()
        finally:
            self.hub.watchers.discard(queue)
            self._watchers.pop(id(queue), None)

    async def _reap(self) -> None:
        """End the streams of watchers that stopped reading: changes wait for them and
        nothing was delivered for STUCK seconds (or the hub already gave up on them)."""
        while self._watchers:
            await asyncio.sleep(HEARTBEAT / 2)
            now = time.monotonic()
            for w in list(self._watchers.values()):
                dropped = w.queue not in self.hub.watchers
                if dropped or (w.queue.qsize() and now - w.sent > STUCK):
                    log.warning("a fleet watcher stopped reading; its stream is ended")
                    w.task.cancel()
                    self._watchers.pop(id(w.queue), None)

    async def _action(self, context: Any, call: Awaitable[Any]) -> fleet_pb2.ActionResponse:
        try:
            ev = await call
        except errors.HubError as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from None
        return fleet_pb2.ActionResponse(message=ev.message, event=core.event_pb(ev))

    async def Sync(self, request: fleet_pb2.SyncRequest, context: Any) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            self.hub.sync(
                request.app,
                request.cluster,
                self._actor(context),
                allow_mass_prune=request.allow_mass_prune,
            ),
        )

    async def Rollback(
        self, request: fleet_pb2.RollbackRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context,
            self.hub.rollback(request.app, request.revision, request.cluster, self._actor(context)),
        )

    async def Unpin(
        self, request: fleet_pb2.UnpinRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, self.hub.unpin(request.app, request.cluster, self._actor(context))
        )

    async def Pause(
        self, request: fleet_pb2.PauseRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, self.hub.pause(request.app, request.reason, self._actor(context), paused=True)
        )

    async def Resume(
        self, request: fleet_pb2.PauseRequest, context: Any
    ) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, self.hub.pause(request.app, request.reason, self._actor(context), paused=False)
        )

    async def History(
        self, request: fleet_pb2.HistoryRequest, context: Any
    ) -> fleet_pb2.HistoryResponse:
        limit = request.limit if 0 < request.limit <= MAX_HISTORY else 0
        if request.limit > MAX_HISTORY:
            limit = MAX_HISTORY
        events = await self.hub.history(app=request.app, cluster=request.cluster, limit=limit)
        return fleet_pb2.HistoryResponse(events=[core.event_pb(e) for e in events])
