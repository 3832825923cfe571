"""The agent's connection to the hub: dial out over mTLS, send the full state in a Hello, take
assignments (downloading bundles that did not come inside them, checked against their digest),
pass `sync now` on, and send reports and acks; redial with backoff when the stream ends or the
hub falls silent.

It never reconciles: it stores what the hub assigns (`agent.state`) and marks apps dirty for
the runner's workers, which keep working when the hub is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc

from fleetops import agent
from fleetops.agent import credentials, errors, kube, state
from fleetops.proto import bundles
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, types_pb2

log = logging.getLogger("fleetops.agent")
HEARTBEAT = 10.0  # seconds between the agent's heartbeats on the hub stream
HUB_SILENCE = 25.0  # seconds without a message from the hub (it beats every 10 s): redial
MAX_MESSAGE = 16 * 1024 * 1024  # gRPC message limit on the hub channel, both ways


def _without_bundle(a: types_pb2.Assignment) -> types_pb2.Assignment:
    """The assignment as kept on disk: its bundle is stored on its own."""
    out = types_pb2.Assignment()
    out.CopyFrom(a)
    out.ClearField("bundle")
    return out


class HubSession:
    """One agent's link to the hub, across reconnections."""

    def __init__(
        self,
        *,
        address: str,
        identity: Callable[[], credentials.Identity],
        client: kube.Kube,
        local: state.LocalState,
        labels: dict[str, str],
        reports: dict[str, types_pb2.AppReport],
        enqueue: Callable[[str], None],
        sync_now: Callable[[str], None],
        stop: asyncio.Event,
        connected: asyncio.Event,
    ) -> None:
        self.address = address
        self.identity = identity  # the current one: a renewal takes effect on the next dial
        self.kube = client
        self.local = local
        self.labels = labels
        self.reports = reports  # app -> the latest report, shared with the runner
        self.enqueue = enqueue
        self.sync_now = sync_now  # an operator's sync: also re-runs a sync a hook failed
        self.stop = stop
        self.connected = connected
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self._version = ""

    def send(self, msg: agent_pb2.AgentMessage) -> None:
        """Queue `msg` on the stream that is up; dropped when none is (the Hello of the next
        one carries the latest reports)."""
        if self._outbox is not None:
            self._outbox.put_nowait(msg)

    async def run(self) -> None:
        """Dial, stream, redial with backoff, until `stop`."""
        backoff = 1.0
        while not self.stop.is_set():
            try:
                await self._session()
                backoff = 1.0
            except grpc.aio.AioRpcError as e:
                log.warning("hub %s: %s: %s", self.address, e.code().name, e.details())
                if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    backoff = max(backoff, 10.0)
            except (errors.AgentError, OSError) as e:
                log.warning("hub %s: %s", self.address, e)
            finally:
                self._outbox = None
                self.connected.clear()
            delay = backoff * (0.8 + 0.4 * random.random())
            backoff = min(backoff * 2, 10.0)
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _session(self) -> None:
        options = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            (
                "grpc.http2.ping_timeout_ms",
                10_000,
            ),  # keepalive_timeout_ms alone is not honoured  # a dead hub is found, idle or not
            # as the hub sets them: its messages stay well under, this is the agreed ceiling
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        target = self.identity().stream_address(self.address)
        async with grpc.aio.secure_channel(
            target, self.identity().credentials(), options=options
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
            hello = agent_pb2.Hello(
                agent_version=agent.__version__,
                kubernetes_version=await self._kubernetes_version(),
                labels=self.labels,
                reports=list(self.reports.values()),
            )
            outbox.put_nowait(agent_pb2.AgentMessage(hello=hello))
            in_hello = dict(self.reports)

            async def requests() -> Any:
                while True:
                    yield await outbox.get()

            async def heartbeat() -> None:  # the hub ends a stream it has not heard from
                while True:
                    await asyncio.sleep(HEARTBEAT)
                    outbox.put_nowait(agent_pb2.AgentMessage(ack=agent_pb2.Ack()))

            call = stub.Connect(requests())
            beating = asyncio.ensure_future(heartbeat())
            try:
                while True:
                    try:  # the hub sends a heartbeat when quiet: silence means it is gone
                        msg = await asyncio.wait_for(call.read(), HUB_SILENCE)
                    except TimeoutError:
                        raise errors.AgentError(
                            f"no word from the hub for {HUB_SILENCE:.0f} s; dialling again"
                        ) from None
                    if not isinstance(msg, agent_pb2.HubMessage):  # grpc.aio.EOF
                        break
                    if not self.connected.is_set():
                        # Only now is the stream up: reports made while dialling go out too
                        # (heals are running totals: the hub counts each one once).
                        for app, report in self.reports.items():
                            if in_hello.get(app) is not report:
                                outbox.put_nowait(agent_pb2.AgentMessage(report=report))
                        self._outbox = outbox
                        self.connected.set()
                        log.info(
                            "connected to hub %s as cluster %s",
                            self.address,
                            self.identity().cluster,
                        )
                    kind = msg.WhichOneof("msg")
                    if kind == "assignments":
                        await self.assignments(stub, msg.assignments)
                    elif kind == "sync_now":
                        for stored in self.local.load_all():
                            if not msg.sync_now.app or stored.assignment.app == msg.sync_now.app:
                                self.sync_now(stored.assignment.app)
            finally:
                beating.cancel()
                call.cancel()  # ends grpc's reader of `requests` cleanly

    async def _kubernetes_version(self) -> str:
        """The API server's version for the Hello; the last one known (or "unknown") when it
        does not answer within 2 s: a hung API server must not hold the hub connection."""
        try:
            self._version = await asyncio.wait_for(self.kube.server_version(), timeout=2)
        except (errors.KubeError, TimeoutError) as e:
            log.warning("Kubernetes version for the hub: %s", e or "no answer within 2 s")
        return self._version or "unknown"

    async def assignments(
        self, stub: agent_pb2_grpc.AgentServiceStub, msg: agent_pb2.Assignments
    ) -> None:
        """Keep what the hub assigns (and forget what it no longer does), ack it, mark it
        dirty; a bundle not inside its assignment nor already here is downloaded."""
        wanted = {a.app: a for a in msg.assignments}
        for stored in self.local.load_all():
            if stored.assignment.app not in wanted:
                # no longer ours to manage: keep what runs, stop reconciling it
                self.local.remove(stored.assignment.app)
                self.reports.pop(stored.assignment.app, None)
                log.info("app %s is no longer assigned; left as it is", stored.assignment.app)
        for a in wanted.values():
            have = self.local.load(a.app)
            if have is not None and have.assignment == _without_bundle(a):
                continue
            if have is not None and bundles.digest(have.bundle) == a.bundle_digest:
                bundle = have.bundle
            elif a.HasField("bundle") and bundles.digest(a.bundle) == a.bundle_digest:
                bundle = a.bundle  # small bundles come inside the assignment
            else:
                bundle = await self._download(stub, a.bundle_digest)
            a = _without_bundle(a)
            self.local.save(a, bundle)
            self.send(agent_pb2.AgentMessage(ack=agent_pb2.Ack(app=a.app, generation=a.generation)))
            self.enqueue(a.app)

    async def _download(
        self, stub: agent_pb2_grpc.AgentServiceStub, digest: str
    ) -> types_pb2.Bundle:
        parts: list[bytes] = []
        call: Any = stub.GetBundle(agent_pb2.GetBundleRequest(digest=digest))
        async for chunk in call:
            parts.append(chunk.data)
        bundle = types_pb2.Bundle.FromString(b"".join(parts))
        if bundles.digest(bundle) != digest:
            raise errors.AgentError(
                f"bundle {digest[:12]} arrived corrupt (digest mismatch); will retry"
            )
        return bundle
