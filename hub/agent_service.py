"""The AgentService servicer: registration, certificate renewal, the agents' stream, bundle
downloads.

Thin: it translates protobuf to calls on `core.Hub` and domain errors to gRPC status codes.
An agent's identity is the client certificate the hub's CA issued (mTLS; the cluster name is
its CN); it can read only its own assignments and bundles and report only its own apps.

TLS proves the CA signed a certificate and that it has not expired; whether it is still the
cluster's certificate is decided here, on every RPC (Connect, GetBundle, Renew), by its
fingerprint: re-registration and `cluster remove` revoke the old one at once. Renewal is a
rotation, not a revocation: the certificate a Renew was made with keeps working until its
successor is first presented, so a lost RenewResponse (or an agent that dies before saving
it) does not lock the agent out, and a stream opened before the renewal is not dropped.
A registration token is spent only on a request that can succeed (a CSR that verifies).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from fleetops.hub import ca, core, errors, status
from fleetops.hub.services import _abort, cluster_of
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("fleetops.hub")
HEARTBEAT = 10.0  # seconds of quiet on an agent's stream before the hub sends a heartbeat


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        hub: core.Hub,
        authority: ca.CA,
        *,
        cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
    ) -> None:
        self.hub = hub
        self.ca = authority
        self.cert_lifetime = cert_lifetime
        self.agent_port = 0
        # cluster -> (fingerprint a Renew was made with, the fingerprint it issued): the
        # first stays accepted while the second is the cluster's current one and unused
        self._handover: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------ who is calling

    def _accepts(self, cluster: str, fingerprint: str) -> bool:
        """Whether `fingerprint` may act for `cluster`: its current certificate, or the one
        just renewed from until the new one is first presented."""
        handover = self._handover.get(cluster)
        if self.hub.certificate_ok(cluster, fingerprint):
            if handover is not None and hmac.compare_digest(handover[1], fingerprint):
                del self._handover[cluster]  # the successor is in use: its predecessor retires
            return True
        return (
            handover is not None
            and hmac.compare_digest(handover[0], fingerprint)
            and self.hub.certificate_ok(cluster, handover[1])
        )

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
        if not self._accepts(cluster, fingerprint):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _refused(cluster))
        return cluster, fingerprint

    # ------------------------------------------------------------ certificates

    async def Register(
        self, request: agent_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RegisterResponse:
        try:
            token = ca.parse_registration_token(request.token)
            if token.pin != self.ca.pin:
                raise errors.Unauthenticated(
                    "registration token was issued by another hub (CA hash differs)"
                )
            csr = ca.read_csr(bytes(request.csr_pem))  # before the token is spent
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
            issued = self.ca.issue(csr, cluster, lifetime=self.cert_lifetime)
            self._handover.pop(cluster, None)  # every earlier certificate is revoked
            await self.hub.register_cluster(
                cluster,
                facts=dict(request.labels),
                hub_labels=labels,
                cert_fingerprint=issued.fingerprint,
                cert_expires=issued.expires,
            )
        except errors.HubError as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from None
        log.info("cluster %s registered (certificate valid until %s)", cluster, _when(issued))
        return agent_pb2.RegisterResponse(
            cluster=cluster,
            certificate_pem=issued.pem,
            ca_pem=self.ca.cert_pem,
            agent_port=self.agent_port,
        )

    async def Renew(
        self, request: agent_pb2.RenewRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RenewResponse:
        """A new certificate for the calling cluster's new key. Only its current certificate
        may ask (TLS has already refused an expired one)."""
        cluster, presented = await self._agent(context, "Renew")
        try:
            csr = ca.read_csr(bytes(request.csr_pem))
            issued = self.ca.issue(csr, cluster, lifetime=self.cert_lifetime)
            # checked again with no await since: a re-registration cannot slip in between
            if not self._accepts(cluster, presented):
                raise errors.Unauthenticated(_refused(cluster))
            self._handover[cluster] = (presented, issued.fingerprint)
            try:
                await self.hub.certificate_renewed(cluster, issued.fingerprint, issued.expires)
            except errors.HubError:
                self._handover.pop(cluster, None)
                raise
        except errors.HubError as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from None
        log.info("cluster %s renewed its certificate (valid until %s)", cluster, _when(issued))
        return agent_pb2.RenewResponse(certificate_pem=issued.pem, ca_pem=self.ca.cert_pem)

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


def _refused(cluster: str) -> str:
    return (
        f"the client certificate of cluster {cluster} was replaced or revoked (the cluster "
        "registered again, or was removed); register this agent again with a new token from "
        f"`fleetops-hub token create --cluster {cluster}`"
    )


def _when(issued: ca.Issued) -> str:
    return status.since(issued.expires)
