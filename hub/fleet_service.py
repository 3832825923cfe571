"""The FleetService servicer: what the TUI and scripts see and do.

Thin: it translates protobuf to calls on `core.Hub` and domain errors to gRPC status codes.
Who calls is settled by `services.AuthInterceptor` before a method runs; the audit actor is
the caller's token name, never anything the client asserts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc

from hub import ca, config, core, errors, store
from hub.services import _abort
from proto.fleetops.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2


class FleetService(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, hub: core.Hub, authority: ca.CA) -> None:
        self.hub = hub
        self.ca = authority

    async def CreateToken(
        self, request: fleet_pb2.CreateTokenRequest, context: Any
    ) -> fleet_pb2.CreateTokenResponse:
        if not config.DNS_LABEL.match(request.cluster) or len(request.cluster) > 63:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"cluster name {request.cluster!r}: use at most 63 lowercase letters, digits, '-'",
            )
        labels = dict(request.labels)
        for key, value in labels.items():
            problem = config.label_problem(key, value)
            if problem:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"label {key}={value}: {problem}"
                )
        ttl = request.ttl_seconds or 3600
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
            actor=self._actor(context),
            message=f"registration token {token.id} for cluster {request.cluster}, valid {ttl} s",
        )
        out = fleet_pb2.CreateTokenResponse(token=str(token), ca_pem=self.ca.cert_pem)
        out.expires_at.FromNanoseconds(int((now + ttl) * 1e9))
        return out

    def _actor(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        meta = dict(context.invocation_metadata() or ())
        return str(meta.get("x-fleetops-actor") or "operator")

    async def GetSnapshot(
        self, request: fleet_pb2.SnapshotRequest, context: Any
    ) -> fleet_pb2.Snapshot:
        return self.hub.snapshot()

    async def Watch(
        self, request: fleet_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[fleet_pb2.FleetChange]:
        queue: asyncio.Queue[fleet_pb2.FleetChange] = asyncio.Queue()
        self.hub.watchers.add(queue)
        try:
            snap = self.hub.snapshot()
            yield fleet_pb2.FleetChange(version=snap.version, snapshot=snap)
            while True:
                yield await queue.get()
        finally:
            self.hub.watchers.discard(queue)

    async def _action(self, context: Any, call: Awaitable[Any]) -> fleet_pb2.ActionResponse:
        try:
            ev = await call
        except errors.HubError as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from None
        return fleet_pb2.ActionResponse(message=ev.message, event=core.event_pb(ev))

    async def Sync(self, request: fleet_pb2.SyncRequest, context: Any) -> fleet_pb2.ActionResponse:
        return await self._action(
            context, self.hub.sync(request.app, request.cluster, self._actor(context))
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
        events = await self.hub.history(
            app=request.app, cluster=request.cluster, limit=request.limit
        )
        return fleet_pb2.HistoryResponse(events=[core.event_pb(e) for e in events])
