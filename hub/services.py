"""Thin gRPC servicers for AgentService and FleetService, and the auth interceptor.

Servicers only translate: messages to calls on `core.Hub`, domain errors to gRPC status codes
with the same message. Authentication lives in `AuthInterceptor`: agents prove who they are
with the client certificate the hub's CA issued (mTLS; the cluster name is the certificate's
CN), fleet callers with a bearer token whose role (operator, readonly) decides what they may
do. An agent can read only its own assignments and bundles and write only its own reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hub import ca, config, core, errors, store
from proto.fleetops.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2

log = logging.getLogger("fleetops.hub")

AGENT_PREFIX = "/fleetops.v1.AgentService/"
FLEET_PREFIX = "/fleetops.v1.FleetService/"
READ_ONLY_METHODS = {"GetSnapshot", "Watch", "History"}
_CODES = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RepoError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RenderError: grpc.StatusCode.FAILED_PRECONDITION,
}


async def _abort(context: grpc.aio.ServicerContext[Any, Any], e: errors.HubError) -> None:
    await context.abort(_CODES.get(type(e), grpc.StatusCode.INTERNAL), str(e))


def cluster_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The cluster name from the verified client certificate, or '' without one."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or [])
    return names[0].decode() if names else ""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Fleet API: a bearer token, and the operator role for anything that changes the fleet.
    Agent API: identity is checked in the servicer from the TLS auth context."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method
        if method.startswith(FLEET_PREFIX):
            metadata = dict(details.invocation_metadata or ())
            header = str(metadata.get("authorization", ""))
            token = header.removeprefix("Bearer ").strip()
            role = ca.role_of(token, self._tokens) if token else None
            if role is None:
                return _deny_like(
                    await continuation(details),
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a fleet API token is required (authorization: Bearer <token>; "
                    "see <data>/tokens/ on the hub)",
                )
            name = method.removeprefix(FLEET_PREFIX)
            if role != "operator" and name not in READ_ONLY_METHODS:
                return _deny_like(
                    await continuation(details),
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{name} changes the fleet and needs an operator token; this "
                    "token is read-only",
                )
        return await continuation(details)


def _deny_like(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that aborts with code and message."""

    async def unary(_req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(
        _req: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, hub: core.Hub, authority: ca.CA) -> None:
        self.hub = hub
        self.ca = authority
        self.agent_port = 0

    async def Register(
        self, request: agent_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RegisterResponse:
        try:
            token = ca.parse_registration_token(request.token)
            if token.pin != self.ca.pin:
                raise errors.Unauthenticated(
                    "registration token was issued by another hub (CA hash differs)"
                )
            secret_hash = hashlib.sha256(token.secret.encode()).hexdigest()
            consumed = await self.hub.db.run(
                self.hub.db.consume_token, token.id, secret_hash, time.time()
            )
            if consumed is None:
                raise errors.Unauthenticated(
                    "registration token is unknown, expired or already used; create a new one with "
                    "`fleetops-hub token create --cluster NAME`"
                )
            cluster, labels = consumed
            cert = self.ca.sign_csr(bytes(request.csr_pem), cluster)
            await self.hub.register_cluster(cluster, dict(request.labels), labels)
        except errors.HubError as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from None
        log.info("cluster %s registered", cluster)
        return agent_pb2.RegisterResponse(
            cluster=cluster,
            certificate_pem=cert,
            ca_pem=self.ca.cert_pem,
            agent_port=self.agent_port,
        )

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.HubMessage]:
        cluster = cluster_of(context)
        if not cluster:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "Connect needs the agent's client certificate"
            )
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello"
            )
            return
        try:
            stream = await self.hub.connect(cluster, first.hello)
        except errors.HubError as e:
            await _abort(context, e)
            return
        log.info("cluster %s connected", cluster)

        async def read() -> str:
            try:
                async for msg in request_iterator:
                    await self.hub.seen(cluster)
                    if msg.HasField("report"):
                        if (
                            msg.report.app
                            and self.hub.assignments.get((cluster, msg.report.app)) is None
                        ):
                            if self.hub.cfg.app(msg.report.app) is None:
                                continue  # a report for an app the hub no longer knows
                        await self.hub.report(cluster, msg.report)
                    elif msg.HasField("hello"):
                        for r in msg.hello.reports:
                            await self.hub.report(cluster, r)
                return "the agent closed the stream"
            except grpc.aio.AioRpcError as e:
                return e.details() or str(e.code())
            except Exception as e:  # a broken stream must not take the hub down
                log.exception("cluster %s: stream error", cluster)
                return f"stream error: {type(e).__name__}"

        reader = asyncio.ensure_future(read())
        reason = "stream ended"
        try:
            while True:
                getter = asyncio.ensure_future(stream.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    msg = getter.result()
                    if msg.WhichOneof("msg") is None:
                        reason = "replaced by a newer connection"
                        break
                    yield msg
                if reader in done:
                    getter.cancel()
                    reason = reader.result()
                    break
        finally:
            reader.cancel()
            await self.hub.disconnect(stream, reason)
            log.info("cluster %s disconnected: %s", cluster, reason)

    async def GetBundle(
        self, request: agent_pb2.GetBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.BundleChunk]:
        cluster = cluster_of(context)
        if not cluster:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "GetBundle needs the agent's client certificate"
            )
        if not self.hub.may_read_bundle(cluster, request.digest):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"bundle {request.digest[:12]} is not assigned to cluster {cluster}",
            )
        try:
            data = await self.hub.bundle_bytes(request.digest)
        except errors.HubError as e:
            await _abort(context, e)
            return
        for chunk in core.chunks(data, request.digest):
            yield chunk


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
