"""The TUI's connection to the hub: FleetService over TLS with a bearer token.

The only place the TUI touches gRPC. Credentials come from flags, the environment
(FLEETOPS_HUB, FLEETOPS_TOKEN, FLEETOPS_CA) or a hub data directory on the hub's machine.
It never logs the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
from collections.abc import AsyncIterator

import grpc

from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2


class CredentialsError(Exception):
    """Something needed to reach the hub is missing; the message says what to pass."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    address: str
    ca_pem: bytes
    token: str

    @classmethod
    def find(cls, *, hub: str = "", token: str = "", ca: str = "", data: str = "") -> Credentials:
        hub = hub or os.environ.get("FLEETOPS_HUB", "")
        token = token or os.environ.get("FLEETOPS_TOKEN", "")
        ca = ca or os.environ.get("FLEETOPS_CA", "")
        if not hub:
            raise CredentialsError("which hub? pass --hub HOST:PORT or set FLEETOPS_HUB")
        ca_pem = b""
        if ca:
            ca_pem = pathlib.Path(ca).read_bytes()
        elif data and (pathlib.Path(data) / "ca.crt").exists():
            ca_pem = (pathlib.Path(data) / "ca.crt").read_bytes()
        if not ca_pem:
            raise CredentialsError(
                "the hub's CA is needed: pass --ca FILE, set FLEETOPS_CA, or --data DIR"
            )
        if not token and data:
            for role in ("operator", "readonly"):
                path = pathlib.Path(data) / "tokens" / role
                if path.exists():
                    token = path.read_text().strip()
                    break
        if not token:
            raise CredentialsError(
                "a fleet API token is needed: pass --token, set FLEETOPS_TOKEN, or --data DIR"
            )
        return cls(hub, ca_pem, token)


SILENCE = 30.0  # seconds without a change or a heartbeat after which the hub counts as lost


class HubSilentError(Exception):
    """The watch stream stayed silent past SILENCE: the hub (or the path to it) is gone."""


class HubClient:
    def __init__(self, creds: Credentials, *, silence: float = SILENCE) -> None:
        self.creds = creds
        self.silence = silence
        # who acts is the token's name, on the hub's side: nothing to say about ourselves
        self._meta = (("authorization", f"Bearer {creds.token}"),)
        self._channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> fleet_pb2_grpc.FleetServiceAsyncStub:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(
                self.creds.address,
                grpc.ssl_channel_credentials(root_certificates=self.creds.ca_pem),
                options=[
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.http2.ping_timeout_ms", 10_000),
                ],
            )
        return fleet_pb2_grpc.FleetServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def watch(self) -> AsyncIterator[fleet_pb2.FleetChange]:
        """Every change; the hub sends an empty one (a heartbeat) when it has been quiet, so
        silence past `self.silence` means the hub is lost, even on a black-holed connection."""
        call = self.stub.Watch(fleet_pb2.WatchRequest(), metadata=self._meta)
        try:
            while True:
                try:
                    change = await asyncio.wait_for(call.read(), self.silence)
                except TimeoutError:
                    raise HubSilentError(f"no word from the hub for {self.silence:.0f} s") from None
                if not isinstance(change, fleet_pb2.FleetChange):  # grpc.aio.EOF: stream over
                    return
                yield change
        finally:
            call.cancel()

    async def snapshot(self) -> fleet_pb2.Snapshot:
        return await self.stub.GetSnapshot(
            fleet_pb2.SnapshotRequest(), metadata=self._meta, timeout=15
        )

    async def sync(self, app: str, cluster: str = "") -> str:
        resp = await self.stub.Sync(
            fleet_pb2.SyncRequest(app=app, cluster=cluster), metadata=self._meta, timeout=60
        )
        return resp.message

    async def rollback(self, app: str, revision: str, cluster: str = "") -> str:
        req = fleet_pb2.RollbackRequest(app=app, revision=revision, cluster=cluster)
        return (await self.stub.Rollback(req, metadata=self._meta, timeout=120)).message

    async def unpin(self, app: str, cluster: str = "") -> str:
        req = fleet_pb2.UnpinRequest(app=app, cluster=cluster)
        return (await self.stub.Unpin(req, metadata=self._meta, timeout=60)).message

    async def pause(self, app: str, *, paused: bool, reason: str = "") -> str:
        req = fleet_pb2.PauseRequest(app=app, reason=reason)
        call = self.stub.Pause if paused else self.stub.Resume
        return (await call(req, metadata=self._meta, timeout=60)).message

    async def history(
        self, app: str = "", cluster: str = "", limit: int = 200
    ) -> list[types_pb2.Event]:
        req = fleet_pb2.HistoryRequest(app=app, cluster=cluster, limit=limit)
        return list((await self.stub.History(req, metadata=self._meta, timeout=15)).events)

    async def rollout_status(self, app: str = "") -> list[fleet_pb2.Rollout]:
        """The app's newest rollout ('' : every app with a rollout policy); an app without
        one is FAILED_PRECONDITION with the hub's message saying how to add it."""
        req = fleet_pb2.RolloutStatusRequest(app=app)
        return list((await self.stub.RolloutStatus(req, metadata=self._meta, timeout=15)).rollouts)

    async def rollout_action(self, app: str, action: str) -> str:
        """pause | resume | promote | abort | retry the app's rollout; the hub's message."""
        req = fleet_pb2.RolloutActionRequest(app=app, action=action)
        return (await self.stub.RolloutAction(req, metadata=self._meta, timeout=60)).message
