"""`fleetops-agent run`: the agent as a long-lived process connected to the hub.

Its long-running loops run under `proto.supervise.Supervisor` (an error is logged with its
traceback and the loop starts again after a backoff, 1 s doubling to a minute): the hub
connection (dial out, send the full state in a Hello, receive assignments, download bundles,
send reports; reconnect with backoff), the app workers, the resync ticker, certificate renewal,
keeping the identity in its Secret, and the /healthz server. No failure of one of them stops
the agent: it ends only on SIGTERM/SIGINT, so `fleetops-agent run` exits 0 only then.

Apps are reconciled by workers, one task per app and at most `workers` apps at once, so an app
waiting for a wave to get healthy (up to --wave-timeout) holds one slot, never the other apps'
syncs and reports. An app is never reconciled twice at the same time: dirtied while it runs, it
runs once more after. Every reconcile ends in a report, failures included (a refused namespace,
an API server that does not answer: ApplyFailed with the reason); one that could not look at
anything is tried again soon, with backoff.

The hub being gone stops nothing but the connection: the workers keep reconciling and
self-healing the assignments kept on disk, and the latest reports go up in the Hello of the
next connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import grpc

from fleetops import agent
from fleetops.agent import credentials, errors, health, keystore, kube, reconcile, renewal, state
from fleetops.agent import status as st
from fleetops.proto import bundles, supervise
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, types_pb2

log = logging.getLogger("fleetops.agent")
HEARTBEAT = 10.0  # seconds between the agent's heartbeats on the hub stream
HUB_SILENCE = 25.0  # seconds without a message from the hub (it beats every 10 s): redial
MAX_MESSAGE = 16 * 1024 * 1024  # gRPC message limit on the hub channel, both ways
WORKERS = 4  # apps reconciled at once


def _same(a: types_pb2.AppReport | None, b: types_pb2.AppReport) -> bool:
    if a is None:
        return False
    x, y = types_pb2.AppReport(), types_pb2.AppReport()
    x.CopyFrom(a)
    y.CopyFrom(b)
    for r in (x, y):
        r.ClearField("observed_at")
        r.ClearField("applied_at")
    return x == y  # healed_resources is a running total: a new heal is a new report


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
        me: credentials.Identity,
        client: kube.Kube,
        local: state.LocalState,
        options: reconcile.Options,
        resync: float,
        labels: dict[str, str],
        health_listen: str = "",
        identity_secret: str = "",
        clock: renewal.Clock | None = None,
        workers: int = WORKERS,
        stop: asyncio.Event | None = None,
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
        self.stop = stop or asyncio.Event()
        self.connected = asyncio.Event()
        self.reports: dict[str, types_pb2.AppReport] = {}
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self._dirty: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        # heals per app since this agent started, sent as a running total: a report lost on a
        # dead stream loses no heal, the next one (or the Hello) carries the total
        self._heals: dict[str, int] = {}
        self._backoff: dict[str, float] = {}
        self._slots = asyncio.Semaphore(max(1, workers))
        self._running: dict[str, asyncio.Task[None]] = {}  # app -> its worker
        self._again: set[str] = set()  # dirtied while running: once more after
        self._probes: asyncio.Server | None = None
        self._version = ""
        self.supervisor = supervise.Supervisor(self.stop)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Until `stop` is set. Raises only when it cannot start (e.g. --health-listen)."""
        for stored in self.local.load_all():  # offline first: what we had keeps running
            self.enqueue(stored.assignment.app)
        if self.health_listen:
            self._probes = await self._bind_probes()  # a bad address ends the agent at once
        loops = {
            "hub connection": self._connection_loop,
            "app workers": self.workers,
            "resync": self._resync_loop,
            "certificate renewal": self._renewal,
        }
        if self.identity_secret:
            loops["identity secret"] = self._keep_identity
        if self.health_listen:
            loops["health server"] = self._serve_probes
        for name, factory in loops.items():
            self.supervisor.start(name, factory)
        log.info(
            "supervising %s (a loop that fails is logged and restarted with backoff)",
            ", ".join(loops),
        )
        await self.stop.wait()
        await self.supervisor.stop()  # cancelling the workers loop cancels the apps' workers

    async def _keep_identity(self) -> None:
        """Keep the identity in its Secret once (a pod restarted with an empty --state finds it
        there); retried by the supervisor while the API server refuses or does not answer."""
        await keystore.keep(self.local.root, self.kube, secret=self.identity_secret)
        log.info("identity kept in Secret %s", self.identity_secret)

    async def _renewal(self) -> None:
        """Renew the certificate before it expires. The stream that is up stays up on the
        old certificate; the next connection uses the new one (credentials are built from
        `self.me` on every dial)."""

        def renewed(me: credentials.Identity) -> None:
            self.me = me

        await renewal.keep_renewed(
            state=self.local.root,
            address=self.address,
            current=lambda: self.me,
            renewed=renewed,
            stop=self.stop,
            clock=self.clock,
            client=self.kube,
            secret=self.identity_secret,
        )

    def _tasks_text(self) -> str:
        return "".join(
            f"{t.name}: {'running' if t.running else 'restarting'}, restarts {t.restarts}"
            + (f", last error: {t.last_error}" if t.last_error else "")
            + "\n"
            for t in self.supervisor.states.values()
        )

    async def _bind_probes(self) -> asyncio.Server:
        """/healthz: the agent's loop answers (and how its supervised loops are); /readyz: it
        is connected to the hub."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
                if path == b"/healthz":
                    code, text = (
                        (200, "ok\n" + self._tasks_text())
                        if not self.stop.is_set()
                        else (503, "stopping")
                    )
                elif path == b"/readyz":
                    code, text = (
                        (200, "connected")
                        if self.connected.is_set()
                        else (503, f"not connected to the hub at {self.address}")
                    )
                else:
                    code, text = 404, "try /healthz or /readyz"
                reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
                body = (text.rstrip("\n") + "\n").encode()
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

    async def _serve_probes(self) -> None:
        server, self._probes = self._probes or await self._bind_probes(), None
        async with server:
            await server.serve_forever()

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

    async def workers(self) -> None:
        """Hand each dirty app to a worker of its own, at most `workers` at once, until
        cancelled (which cancels the apps' workers too). Runs without a hub connection."""
        try:
            while not self.stop.is_set():
                app = await self._dirty.get()
                self._queued.discard(app)
                if app in self._running:
                    self._again.add(app)
                    continue
                await self._slots.acquire()
                self._running[app] = asyncio.create_task(self._work(app), name=f"app {app}")
        except asyncio.CancelledError:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _work(self, app: str) -> None:
        try:
            await self._reconcile_app(app)
        except Exception:  # one app's failure must not stop the others
            log.exception("app %s: reconcile failed", app)
        finally:
            self._running.pop(app, None)
            self._slots.release()
            if app in self._again:
                self._again.discard(app)
                self.enqueue(app)

    async def _reconcile_app(self, app: str) -> None:
        try:
            stored = self.local.load(app)
        except errors.StateError as e:
            log.error("%s", e)
            return
        if stored is None:
            return
        a = stored.assignment
        bundle = types_pb2.Bundle()
        bundle.CopyFrom(stored.bundle)
        bundle.revision = a.revision
        if a.paused:
            result = await self.rec.check(bundle, a.policy, allow_mass_prune=a.allow_mass_prune)
        else:
            result = await self.rec.reconcile(bundle, a.policy, allow_mass_prune=a.allow_mass_prune)
        self._follow_up(app, result)
        report = st.to_report(result, generation=a.generation)
        self._heals[app] = self._heals.get(app, 0) + report.healed_resources
        report.healed_resources = self._heals[app]
        if not _same(self.reports.get(app), report):
            self.reports[app] = report
            self._send(agent_pb2.AgentMessage(report=report))
            log.log(
                logging.WARNING if result.failed else logging.INFO,
                "app %s %s: %s %s: %s",
                app,
                a.revision[:8],
                st.sync_name(result.sync),
                health.name(result.health),
                result.reason,
            )

    def _follow_up(self, app: str, result: st.AppResult) -> None:
        """While an app is still rolling out, or the API server did not answer, look again
        soon (0.5 s, doubling up to the resync interval) so its health reaches the hub when it
        changes, not a resync later."""
        if (
            result.health != health.PROGRESSING
            and result.sync != st.APPLYING
            and not result.retry_soon
        ):
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
        target = self.me.stream_address(self.address)
        async with grpc.aio.secure_channel(
            target, self.me.credentials(), options=options
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
                        log.info("connected to hub %s as cluster %s", self.address, self.me.cluster)
                    kind = msg.WhichOneof("msg")
                    if kind == "assignments":
                        await self._assignments(stub, msg.assignments)
                    elif kind == "sync_now":
                        for stored in self.local.load_all():
                            if not msg.sync_now.app or stored.assignment.app == msg.sync_now.app:
                                self.enqueue(stored.assignment.app)
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
