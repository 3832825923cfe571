"""Fakes, named as such: stand-ins for what a test is not about.

`FakeAgent` is a real gRPC client with its own key and hub-signed certificate on its own mTLS
connection, that streams, downloads bundles, acknowledges and reports like the real agent,
but whose "cluster" is an in-memory dict. Used to load the hub and to feed the TUI.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.proto import bundles
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, types_pb2


class FakeAgent:
    """A fake agent: real gRPC and mTLS, an in-memory cluster."""

    def __init__(
        self,
        name: str,
        *,
        sync: int = types_pb2.SYNC_STATUS_SYNCED,
        health: int = types_pb2.HEALTH_STATUS_HEALTHY,
        reason: str = "fake cluster: applied in memory",
    ) -> None:
        self.name = name
        self.report_sync = sync
        self.report_health = health
        self.reason = reason
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = b""
        self.applied: dict[str, str] = {}  # app -> revision
        self.acked: dict[str, float] = {}  # revision -> when acknowledged
        self.bundles: dict[str, types_pb2.Bundle] = {}
        self.failures: list[str] = []

    def csr(self) -> bytes:
        return (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)]))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )

    async def run(self, address: str, ca: bytes, ready: asyncio.Event) -> None:
        """Stay connected like the real agent: redial with backoff when the stream fails."""
        backoff = 0.5
        while True:
            try:
                await self._session(address, ca, ready)
            except grpc.aio.AioRpcError as e:
                self.failures.append(e.code().name)
            except OSError as e:
                self.failures.append(type(e).__name__)
            # not a wait: the redial backoff is what this fake agent does, like the real one
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 10)

    async def _session(self, address: str, ca: bytes, ready: asyncio.Event) -> None:
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=self.cert
        )
        async with grpc.aio.secure_channel(address, creds) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
            outbox.put_nowait(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="fake")))

            async def requests() -> Any:
                while True:
                    yield await outbox.get()

            async def heartbeat() -> None:  # as the real agent does: the hub drops silent ones
                while True:
                    await asyncio.sleep(10)  # not a wait: the heartbeat interval
                    outbox.put_nowait(agent_pb2.AgentMessage(ack=agent_pb2.Ack()))

            beating = asyncio.ensure_future(heartbeat())
            call: Any = stub.Connect(requests())
            try:
                await self._stream(call, stub, outbox, ready)
            finally:
                beating.cancel()

    async def _stream(
        self,
        call: Any,
        stub: agent_pb2_grpc.AgentServiceStub,
        outbox: asyncio.Queue[agent_pb2.AgentMessage],
        ready: asyncio.Event,
    ) -> None:
        async for msg in call:
            if not msg.HasField("assignments"):
                continue
            for a in msg.assignments.assignments:
                if self.applied.get(a.app) == a.revision:
                    continue
                bundle = self.bundles.get(a.bundle_digest)
                if bundle is None and a.HasField("bundle"):
                    bundle = a.bundle
                    assert bundles.digest(bundle) == a.bundle_digest
                if bundle is None:
                    parts = [
                        c.data
                        async for c in stub.GetBundle(
                            agent_pb2.GetBundleRequest(digest=a.bundle_digest)
                        )
                    ]
                    bundle = types_pb2.Bundle.FromString(b"".join(parts))
                    assert bundles.digest(bundle) == a.bundle_digest
                    self.bundles = {a.bundle_digest: bundle}
                self.applied[a.app] = a.revision
                self.acked[a.revision] = time.perf_counter()
                outbox.put_nowait(
                    agent_pb2.AgentMessage(ack=agent_pb2.Ack(app=a.app, generation=a.generation))
                )
                report = types_pb2.AppReport(
                    app=a.app,
                    revision=a.revision,
                    bundle_digest=a.bundle_digest,
                    generation=a.generation,
                    sync=self.report_sync,  # type: ignore[arg-type]
                    health=self.report_health,  # type: ignore[arg-type]
                    reason=self.reason,
                )
                outbox.put_nowait(agent_pb2.AgentMessage(report=report))
                ready.set()
