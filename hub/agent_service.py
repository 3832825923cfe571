"""The AgentService servicer: registration, certificate renewal, the agents' stream, bundle
downloads.

Thin: it translates protobuf to calls on one narrow interface, `AgentHub` (the core
implements it), and domain errors to gRPC status codes. An agent's identity is the client
certificate the hub's CA issued (mTLS; the cluster name is its CN); whether that certificate
is still the cluster's is the hub's decision (`AgentHub.accepts`, see hub.enrollment), asked
on every RPC (Connect, GetBundle, Renew).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from fleetops.hub import ca, enrollment, errors, sessions
from fleetops.hub.services import abort, cluster_of
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("fleetops.hub")
HEARTBEAT = 10.0  # seconds of quiet on an agent's stream before the hub sends a heartbeat


class AgentHub(Protocol):
    """What the agent API needs of the hub."""

    async def register(
        self, *, token: str, csr_pem: bytes, facts: dict[str, str]
    ) -> enrollment.Certificate: ...

    async def renew(
        self, *, cluster: str, presented: str, csr_pem: bytes
    ) -> enrollment.Certificate: ...

    def accepts(self, cluster: str, fingerprint: str) -> bool: ...

    async def connect(self, cluster: str, hello: agent_pb2.Hello) -> sessions.Stream: ...

    async def heard(self, cluster: str, msg: agent_pb2.AgentMessage) -> None: ...

    async def disconnect(self, stream: sessions.Stream, reason: str) -> None: ...

    async def bundle(self, cluster: str, digest: str) -> bytes: ...


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, hub: AgentHub) -> None:
        self.hub = hub
        self.agent_port = 0  # told to registering agents; set once the server listens

    # ------------------------------------------------------------ who is calling

    async def _agent(
        self, context: grpc.aio.ServicerContext[Any, Any], rpc: str
    ) -> tuple[str, str]:
        """(cluster, certificate fingerprint) of the calling agent, or the call is aborted
        with UNAUTHENTICATED: no client certificate, or one that is no longer the cluster's."""
        cluster = cluster_of(context)
        pems = list(context.auth_context().get("x509_pem_cert") or [])
        if not cluster or not pems:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{rpc} needs the agent's client certificate (on the mTLS port the hub gave "
                "at registration)",
            )
        fingerprint = ca.fingerprint_pem(pems[0])
        if not self.hub.accepts(cluster, fingerprint):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, enrollment.refused(cluster))
        return cluster, fingerprint

    # ------------------------------------------------------------ certificates

    async def Register(
        self, request: agent_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RegisterResponse:
        try:
            done = await self.hub.register(
                token=request.token, csr_pem=bytes(request.csr_pem), facts=dict(request.labels)
            )
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        return agent_pb2.RegisterResponse(
            cluster=done.cluster,
            certificate_pem=done.pem,
            ca_pem=done.ca_pem,
            agent_port=self.agent_port,
        )

    async def Renew(
        self, request: agent_pb2.RenewRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RenewResponse:
        """A new certificate for the calling cluster's new key. Only its current certificate
        may ask (TLS has already refused an expired one)."""
        cluster, presented = await self._agent(context, "Renew")
        try:
            issued = await self.hub.renew(
                cluster=cluster, presented=presented, csr_pem=bytes(request.csr_pem)
            )
        except errors.HubError as e:
            await abort(context, e)
            raise AssertionError("unreachable") from None
        return agent_pb2.RenewResponse(certificate_pem=issued.pem, ca_pem=issued.ca_pem)

    # ------------------------------------------------------------ the stream and bundles

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.HubMessage]:
        cluster, _ = await self._agent(context, "Connect")
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello"
            )
            return
        try:
            stream = await self.hub.connect(cluster, first.hello)
        except errors.HubError as e:
            await abort(context, e)
            return
        log.info("cluster %s connected", cluster)

        async def read() -> str:
            try:
                async for msg in request_iterator:
                    await self.hub.heard(cluster, msg)
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
                done, _ = await asyncio.wait(
                    {getter, reader}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # quiet: tell the agent the hub is there
                    getter.cancel()
                    yield agent_pb2.HubMessage(heartbeat=agent_pb2.Heartbeat())
                    continue
                if getter in done:
                    msg = getter.result()
                    if msg.WhichOneof("msg") is None:
                        reason = stream.ended or "ended by the hub"
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
        cluster, _ = await self._agent(context, "GetBundle")
        try:
            data = await self.hub.bundle(cluster, request.digest)
        except errors.HubError as e:
            await abort(context, e)
            return
        for chunk in sessions.chunks(data, request.digest):
            yield chunk
