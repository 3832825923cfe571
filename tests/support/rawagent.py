"""A hand-driven agent for attack tests: real gRPC and mTLS, every message chosen by the test.

Unlike the fake agent in tests/support/fakes.py it does nothing by itself: a test registers it with
whatever labels it likes, opens the stream with whatever Hello it likes, reads assignments
and sends any report, as a lying or compromised agent would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc


def operator(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def registration_token(
    address: str, ca_pem: bytes, api_token: str, cluster: str, labels: dict[str, str]
) -> str:
    async with grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
    ) as ch:
        resp = await fleet_pb2_grpc.FleetServiceStub(ch).CreateToken(
            fleet_pb2.CreateTokenRequest(cluster=cluster, ttl_seconds=600, labels=labels),
            metadata=operator(api_token),
        )
        return str(resp.token)


@dataclasses.dataclass
class Stream:
    """An open Connect stream: `send` messages up, `next_assignments` down."""

    call: Any
    outbox: asyncio.Queue[agent_pb2.AgentMessage]

    async def send(self, msg: agent_pb2.AgentMessage) -> None:
        await self.outbox.put(msg)

    async def next_assignments(self, within: float = 20.0) -> agent_pb2.Assignments:
        async def read() -> agent_pb2.Assignments:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    raise AssertionError("the hub closed the stream")
                if msg.HasField("assignments"):
                    return msg.assignments

        return await asyncio.wait_for(read(), within)


class RawAgent:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = b""
        self.cluster = ""
        self.agent_port = 0

    def csr(self) -> bytes:
        return (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")]))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )

    async def register(
        self, address: str, ca_pem: bytes, token: str, labels: dict[str, str] | None = None
    ) -> None:
        async with grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
        ) as ch:
            resp = await agent_pb2_grpc.AgentServiceStub(ch).Register(
                agent_pb2.RegisterRequest(token=token, csr_pem=self.csr(), labels=labels or {})
            )
        self.cert = resp.certificate_pem
        self.cluster = resp.cluster
        self.agent_port = resp.agent_port

    def credentials(self, ca_pem: bytes) -> grpc.ChannelCredentials:
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key, certificate_chain=self.cert
        )

    async def connect(
        self, channel: grpc.aio.Channel, hello: agent_pb2.Hello | None = None
    ) -> Stream:
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        outbox.put_nowait(agent_pb2.AgentMessage(hello=hello or agent_pb2.Hello()))

        async def requests() -> AsyncIterator[agent_pb2.AgentMessage]:
            while True:
                yield await outbox.get()

        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(requests())

        async def heartbeat() -> None:  # as the real agent does, unless the test stops it
            while not call.done():
                await asyncio.sleep(5)  # not a wait: the heartbeat interval
                outbox.put_nowait(agent_pb2.AgentMessage(ack=agent_pb2.Ack()))

        task = asyncio.ensure_future(heartbeat())
        call.add_done_callback(lambda _: task.cancel())
        return Stream(call, outbox)
