"""`fleetops-agent run`: the agent as a long-lived process connected to the hub.

Three guarded tasks: the connection (dial out, send the full state in a Hello, receive
assignments, download bundles, send reports; reconnect with backoff), a worker that
reconciles one app at a time, and a resync ticker. The hub being gone stops nothing but the
connection: the worker keeps reconciling and self-healing the assignments kept on disk, and
the latest reports go up in the Hello of the next connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import grpc

import agent
from agent import errors, health, identity, kube, reconcile, state
from agent import status as st
from proto import bundles
from proto.fleetops.v1 import agent_pb2, agent_pb2_grpc, types_pb2

log = logging.getLogger("fleetops.agent")


def _same(a: types_pb2.AppReport | None, b: types_pb2.AppReport) -> bool:
    if a is None:
        return False
    x, y = types_pb2.AppReport(), types_pb2.AppReport()
    x.CopyFrom(a)
    y.CopyFrom(b)
    for r in (x, y):
        r.ClearField("observed_at")
        r.ClearField("applied_at")
        r.healed_resources = 0
    return x == y and not b.healed_resources


def _without_bundle(a: types_pb2.Assignment) -> types_pb2.Assignment:
    """The assignment as kept on disk: its bundle is stored on its own."""
    out = types_pb2.Assignment()
    out.CopyFrom(a)
    out.ClearField("bundle")
    return out


class Runner:
    def __init__(
        self,
        *,
        address: str,
        me: identity.Identity,
        client: kube.Kube,
        local: state.LocalState,
        options: reconcile.Options,
        resync: float,
        labels: dict[str, str],
        health_listen: str = "",
        identity_secret: str = "",
        clock: identity.Clock | None = None,
    ) -> None:
        self.address = address
        self.identity_secret = identity_secret  # NAMESPACE/NAME: renewals are kept there too
        self.clock = clock
        self.health_listen = health_listen
        self.me = me
        self.kube = client
        self.local = local
        # the cluster's name lets a held prune say which `fleetops-hub sync` allows it
        self.rec = reconcile.Reconciler(client, dataclasses.replace(options, cluster=me.cluster))
        self.resync = resync
        self.labels = labels
        self.stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.reports: dict[str, types_pb2.AppReport] = {}
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self._dirty: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._pending_heals: dict[str, int] = {}
        self._backoff: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        for stored in self.local.load_all():  # offline first: what we had keeps running
            self.enqueue(stored.assignment.app)
        probes = await self._serve_probes() if self.health_listen else None
        tasks = [
            asyncio.create_task(self._guard("connection", self._connection_loop())),
            asyncio.create_task(self._guard("worker", self._worker())),
            asyncio.create_task(self._guard("resync", self._resync_loop())),
            asyncio.create_task(self._guard("certificate renewal", self._renewal())),
        ]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if probes is not None:
            probes.close()
            await probes.wait_closed()

    async def _renewal(self) -> None:
        """Renew the certificate before it expires. The stream that is up stays up on the
        old certificate; the next connection uses the new one (credentials are built from
        `self.me` on every dial)."""

        def renewed(me: identity.Identity) -> None:
            self.me = me

        await identity.keep_renewed(
            state=self.local.root,
            address=self.address,
            current=lambda: self.me,
            renewed=renewed,
            stop=self.stop,
            clock=self.clock,
            client=self.kube,
            secret=self.identity_secret,
        )

    async def _serve_probes(self) -> asyncio.Server:
        """/healthz: the agent's loop answers; /readyz: it is connected to the hub."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
                if path == b"/healthz":
                    code, text = (200, "ok") if not self.stop.is_set() else (503, "stopping")
                elif path == b"/readyz":
                    code, text = (
                        (200, "connected")
                        if self.connected.is_set()
                        else (503, f"not connected to the hub at {self.address}")
                    )
                else:
                    code, text = 404, "try /healthz or /readyz"
                reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
                body = (text + "\n").encode()
                writer.write(
                    f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (TimeoutError, OSError, IndexError):
                pass
            finally:
                writer.close()

        host, _, port = self.health_listen.rpartition(":")
        if not port.isdigit():
            raise errors.AgentError(f"--health-listen {self.health_listen!r}: use HOST:PORT")
        try:
            return await asyncio.start_server(answer, host.strip("[]") or None, int(port))
        except OSError as e:
            raise errors.AgentError(f"--health-listen {self.health_listen}: {e.strerror}") from None

    async def _guard(self, name: str, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s task failed; stopping the agent", name)
            self.stop.set()

    def enqueue(self, app: str) -> None:
        if app not in self._queued:
            self._queued.add(app)
            self._dirty.put_nowait(app)

    # ------------------------------------------------------------ reconciling

    async def _resync_loop(self) -> None:
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.resync)
            except TimeoutError:
                for stored in self.local.load_all():
                    self.enqueue(stored.assignment.app)

    async def _worker(self) -> None:
        while not self.stop.is_set():
            app = await self._dirty.get()
            self._queued.discard(app)
            try:
                stored = self.local.load(app)
            except errors.StateError as e:
                log.error("%s", e)
                continue
            if stored is None:
                continue
            a = stored.assignment
            bundle = types_pb2.Bundle()
            bundle.CopyFrom(stored.bundle)
            bundle.revision = a.revision
            try:
                if a.paused:
                    result = await self.rec.check(
                        bundle, a.policy, allow_mass_prune=a.allow_mass_prune
                    )
                else:
                    result = await self.rec.reconcile(
                        bundle, a.policy, allow_mass_prune=a.allow_mass_prune
                    )
            except errors.AgentError as e:
                log.error("app %s: %s", app, e)
                continue
            except Exception:  # one app's failure must not stop the others
                log.exception("app %s: reconcile failed", app)
                continue
            self._follow_up(app, result)
            report = st.to_report(result, generation=a.generation)
            if not _same(self.reports.get(app), report):
                if self._outbox is None:
                    # offline: keep counting heals so the hub hears of them on reconnect
                    self._pending_heals[app] = (
                        self._pending_heals.get(app, 0) + report.healed_resources
                    )
                    report.healed_resources = self._pending_heals[app]
                self.reports[app] = report
                self._send(agent_pb2.AgentMessage(report=report))
                log.info(
                    "app %s %s: %s %s: %s",
                    app,
                    a.revision[:8],
                    st.sync_name(result.sync),
                    health.name(result.health),
                    result.reason,
                )

    def _follow_up(self, app: str, result: st.AppResult) -> None:
        """While an app is still rolling out, look again soon (0.5 s, doubling up to the
        resync interval) so its health reaches the hub when it changes, not a resync later."""
        if result.health != health.PROGRESSING and result.sync != st.APPLYING:
            self._backoff.pop(app, None)
            return
        delay = self._backoff.get(app, 0.25) * 2
        self._backoff[app] = min(delay, self.resync)
        loop = asyncio.get_running_loop()
        loop.call_later(self._backoff[app], self.enqueue, app)

    def _send(self, msg: agent_pb2.AgentMessage) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(msg)

    # ------------------------------------------------------------ the hub

    async def _connection_loop(self) -> None:
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
            backoff = min(backoff * 2, 30.0)
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _session(self) -> None:
        options = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        target = self.me.stream_address(self.address)
        async with grpc.aio.secure_channel(
            target, self.me.credentials(), options=options
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
            try:
                version = await self.kube.server_version()
            except errors.KubeError:
                version = "unknown"
            hello = agent_pb2.Hello(
                agent_version=agent.__version__,
                kubernetes_version=version,
                labels=self.labels,
                reports=list(self.reports.values()),
            )
            outbox.put_nowait(agent_pb2.AgentMessage(hello=hello))
            in_hello = dict(self.reports)

            async def requests() -> Any:
                while True:
                    yield await outbox.get()

            call = stub.Connect(requests())
            try:
                async for msg in call:
                    if not self.connected.is_set():
                        # Only now is the stream up: reports made while dialling go out too, and
                        # what happened offline (heals) has been told once and is not repeated.
                        for app, report in self.reports.items():
                            if in_hello.get(app) is not report:
                                outbox.put_nowait(agent_pb2.AgentMessage(report=report))
                        self._pending_heals.clear()
                        for report in self.reports.values():
                            report.healed_resources = 0
                        self._outbox = outbox
                        self.connected.set()
                        log.info("connected to hub %s as cluster %s", self.address, self.me.cluster)
                    kind = msg.WhichOneof("msg")
                    if kind == "assignments":
                        await self._assignments(stub, msg.assignments)
                    elif kind == "sync_now":
                        for stored in self.local.load_all():
                            if not msg.sync_now.app or stored.assignment.app == msg.sync_now.app:
                                self.enqueue(stored.assignment.app)
            finally:
                call.cancel()  # ends grpc's reader of `requests` cleanly

    async def _assignments(
        self, stub: agent_pb2_grpc.AgentServiceStub, msg: agent_pb2.Assignments
    ) -> None:
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
            self._send(
                agent_pb2.AgentMessage(ack=agent_pb2.Ack(app=a.app, generation=a.generation))
            )
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
