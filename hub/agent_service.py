"""The AgentService servicer: registration, the agents' stream, bundle downloads.

Thin: it translates protobuf to calls on `core.Hub` and domain errors to gRPC status codes.
An agent's identity is the client certificate the hub's CA issued (mTLS; the cluster name is
its CN); it can read only its own assignments and bundles and report only its own apps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hub import ca, core, errors
from hub.services import _abort, cluster_of
from proto.fleetops.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("fleetops.hub")


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
            await self.hub.register_cluster(
                cluster,
                facts=dict(request.labels),
                hub_labels=labels,
                cert_fingerprint="",  # TODO(cert lifecycle): the new certificate's fingerprint
                cert_expires=0.0,
            )
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
