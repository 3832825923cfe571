"""Rollout scenarios against a real hub process: a Git repository holding one app, a
`fleetops-hub serve` process whose hub.yaml gives that app a rollout policy, and one fake agent
per cluster whose health the test sets at any time and which the test can take offline.

Real: the hub process, its store and TLS, Git commits, the fleet API (RolloutStatus,
RolloutAction, snapshots). Fake, and named so: `ScenarioAgent` stands in for a cluster (these
tests are about the hub's rollouts, not about applying): a real mTLS gRPC client that
registers, streams, downloads bundles, acknowledges and reports like the real agent, with an
in-memory cluster. Like the real agent it reports its latest state again on every (re)connect
and answers every new assignment generation, even of a revision it already runs.

    async with rollouts.running(tmp_path, clusters=..., rollout=...) as sc:
        await sc.baseline()                     # the first revision everywhere, promoted
        rev = await sc.commit("v2")
        await sc.until("the canary to bake", lambda r: r.clusters[0].phase == "Baking")
        sc.agents["canary"].set_health(types_pb2.HEALTH_STATUS_DEGRADED)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http.server
import json
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import yaml

from fleetops.proto import bundles
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2
from tests.support import fakes, fleet, wait

APP = "web"
HEALTHY = types_pb2.HEALTH_STATUS_HEALTHY
PROGRESSING = types_pb2.HEALTH_STATUS_PROGRESSING
DEGRADED = types_pb2.HEALTH_STATUS_DEGRADED


class ScenarioAgent(fakes.FakeAgent):
    """A fake agent (in-memory cluster) whose health the test sets: `set_health` reports the
    new health at once for the revision it runs, as the real agent does when its workloads
    change; `go_offline` / `come_back` end and restart its connection."""

    def __init__(self, name: str, *, health: int = HEALTHY) -> None:
        super().__init__(name, health=health)
        self.reports: dict[str, types_pb2.AppReport] = {}  # app -> the latest report sent
        self.given: list[str] = []  # every revision it was given, in order
        self.address = ""
        self.ca = b""
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ what the test drives

    def start(self, address: str, ca: bytes) -> None:
        self.address, self.ca = address, ca
        self._task = asyncio.ensure_future(self.run(address, ca, asyncio.Event()))

    async def go_offline(self) -> None:
        """Drop the connection and stay away (the hub sees the stream end)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._outbox = None
        self.connected.clear()

    def come_back(self) -> None:
        self.start(self.address, self.ca)

    @property
    def wanted_online(self) -> bool:
        """The test has it connect (it may be redialling right now)."""
        return self._task is not None

    def set_health(self, health: types_pb2.HealthStatus.ValueType, reason: str = "") -> None:
        """From now on the cluster is `health`; said to the hub at once when connected."""
        self.report_health = health
        self.reason = reason or f"fake cluster: {types_pb2.HealthStatus.Name(health)}"
        for app, old in list(self.reports.items()):
            self._report(
                app, revision=old.revision, digest=old.bundle_digest, generation=old.generation
            )

    def runs(self, app: str = APP) -> str:
        return self.applied.get(app, "")

    # ------------------------------------------------------------ the stream

    def _report(self, app: str, *, revision: str, digest: str, generation: int) -> None:
        report = types_pb2.AppReport(
            app=app,
            revision=revision,
            bundle_digest=digest,
            generation=generation,
            sync=self.report_sync,  # type: ignore[arg-type]
            health=self.report_health,  # type: ignore[arg-type]
            reason=self.reason,
        )
        self.reports[app] = report
        if self._outbox is not None:
            self._outbox.put_nowait(agent_pb2.AgentMessage(report=report))

    async def _stream(
        self,
        call: Any,
        stub: agent_pb2_grpc.AgentServiceStub,
        outbox: asyncio.Queue[agent_pb2.AgentMessage],
        ready: asyncio.Event,
    ) -> None:
        self._outbox = outbox
        for report in self.reports.values():  # as the real agent's hello carries them
            outbox.put_nowait(agent_pb2.AgentMessage(report=report))
        try:
            async for msg in call:
                self.connected.set()  # the hub answered: the stream is up
                if msg.HasField("assignments"):
                    for a in msg.assignments.assignments:
                        await self._take(stub, outbox, a)
                    ready.set()
        finally:
            self._outbox = None
            self.connected.clear()

    async def _take(
        self,
        stub: Any,
        outbox: asyncio.Queue[agent_pb2.AgentMessage],
        a: types_pb2.Assignment,
    ) -> None:
        last = self.reports.get(a.app)
        if last is not None and last.generation >= a.generation:
            return  # answered already
        if a.bundle_digest not in self.bundles:
            bundle = a.bundle if a.HasField("bundle") else None
            if bundle is None:
                parts = [
                    c.data
                    async for c in stub.GetBundle(
                        agent_pb2.GetBundleRequest(digest=a.bundle_digest)
                    )
                ]
                bundle = types_pb2.Bundle.FromString(b"".join(parts))
            assert bundles.digest(bundle) == a.bundle_digest, f"{self.name}: a bundle's digest"
            self.bundles = {a.bundle_digest: bundle}
        if self.applied.get(a.app) != a.revision:
            self.given.append(a.revision)
        self.applied[a.app] = a.revision
        self.acked[a.revision] = time.perf_counter()
        outbox.put_nowait(
            agent_pb2.AgentMessage(ack=agent_pb2.Ack(app=a.app, generation=a.generation))
        )
        self._report(a.app, revision=a.revision, digest=a.bundle_digest, generation=a.generation)


@dataclasses.dataclass(frozen=True)
class Call:
    """One webhook gate call as received: the raw body and the headers (names lowercased)."""

    body: bytes
    headers: dict[str, str]

    def doc(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook gate's receiver: a real HTTP server on 127.0.0.1:0 that records every call
    and answers with the status and `{"message": ...}` the test sets. `close` (or leaving
    `receiving`) stops it and closes its socket."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status = 200
        self.message = "smoke passed"
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.calls.append(
                        Call(body, {k.lower(): v for k, v in self.headers.items()})
                    )
                    status, message = receiver.status, receiver.message
                reply = json.dumps({"message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/smoke"

    def answer(self, status: int, message: str) -> None:
        with self._lock:
            self.status, self.message = status, message

    def received(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


def write_app(repo: fleet.Repo, version: str) -> None:
    repo.write(
        "apps/web/configmap.yaml",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web"},
            "data": {"version": version},
        },
    )


def hub_yaml(
    repo_url: str,
    *,
    clusters: Mapping[str, str],
    rollout: Mapping[str, Any],
    gates: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One repo polled every second, one auto-synced app with `rollout`, the clusters with a
    `role` label each (cluster -> role) and a cluster group per role."""
    roles = sorted(set(clusters.values()))
    return {
        "repos": [{"name": "platform", "url": repo_url, "pollInterval": "1s"}],
        "clusters": [{"name": c, "labels": {"role": r}} for c, r in clusters.items()],
        "clusterGroups": [{"name": r, "selector": {"matchLabels": {"role": r}}} for r in roles],
        "gates": list(gates),
        "apps": [
            {
                "name": APP,
                "repo": "platform",
                "path": "apps/web",
                "namespace": APP,
                "sync": {"auto": True, "prune": True, "selfHeal": True},
                "rollout": dict(rollout),
            }
        ],
    }


@dataclasses.dataclass
class Scenario:
    root: pathlib.Path
    repo: fleet.Repo
    config: pathlib.Path
    hub: fleet.Hub
    agents: dict[str, ScenarioAgent]
    versions: int = 0
    last: fleet_pb2.Rollout | None = None  # the latest RolloutStatus seen, for explanations
    _channel: grpc.aio.Channel | None = None

    # ------------------------------------------------------------ the fleet API

    def _stub(self) -> Any:  # the aio stub (mypy-protobuf types it as the sync one)
        if self._channel is None:
            ca = (self.hub.data / "ca.crt").read_bytes()
            self._channel = grpc.aio.secure_channel(
                self.hub.address, grpc.ssl_channel_credentials(root_certificates=ca)
            )
        return fleet_pb2_grpc.FleetServiceStub(self._channel)

    @property
    def meta(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.hub.token()}"), ("x-fleetops-actor", "tester"))

    async def close_api(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def rollout(self) -> fleet_pb2.Rollout:
        got = await self._stub().RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app=APP), metadata=self.meta, timeout=10
        )
        self.last = got.rollouts[0]
        return self.last

    async def action(self, action: str) -> str:
        got = await self._stub().RolloutAction(
            fleet_pb2.RolloutActionRequest(app=APP, action=action), metadata=self.meta, timeout=10
        )
        return str(got.message)

    async def desired(self) -> dict[str, str]:
        """cluster -> the revision the hub assigns it now ('' when none)."""
        snap = await self._stub().GetSnapshot(
            fleet_pb2.SnapshotRequest(), metadata=self.meta, timeout=10
        )
        return {s.cluster: s.desired_revision for s in snap.statuses if s.app == APP}

    async def history(self) -> list[types_pb2.Event]:
        got = await self._stub().History(
            fleet_pb2.HistoryRequest(app=APP, limit=500), metadata=self.meta, timeout=10
        )
        return list(got.events)

    # ------------------------------------------------------------ Git

    async def commit(self, message: str = "") -> str:
        self.versions += 1
        version = f"1.{self.versions}.0"
        write_app(self.repo, version)
        return await asyncio.to_thread(self.repo.commit, message or f"web {version}")

    # ------------------------------------------------------------ waiting

    def explain(self) -> str:
        lines: list[str] = []
        r = self.last
        if r is not None:
            lines.append(f"rollout {r.revision[:8]} {r.phase} step {r.step}: {r.reason}")
            lines += [
                f"  {c.cluster} [{c.step}] {c.phase} left {c.bake_left_seconds:.1f}: {c.reason}"
                for c in r.clusters
            ]
            lines.append(f"  rejected: {dict(r.rejected)}")
        lines += [
            f"  agent {n} runs {a.runs()[:8]} given {[g[:8] for g in a.given]}"
            for n, a in self.agents.items()
        ]
        return "\n".join(lines) + "\n--- hub log\n" + self.hub.process.tail()

    async def until(
        self,
        what: str,
        check: Callable[[fleet_pb2.Rollout], object],
        *,
        within: float = 20.0,
    ) -> fleet_pb2.Rollout:
        """The first RolloutStatus for which `check` is truthy."""

        async def probe() -> fleet_pb2.Rollout | None:
            r = await self.rollout()
            return r if check(r) else None

        return await wait.until(
            what, probe, within=within, every=0.1, retry_on=(grpc.RpcError,), explain=self.explain
        )

    async def until_true(
        self,
        what: str,
        probe: Callable[[], Awaitable[object]] | Callable[[], object],
        *,
        within: float = 20.0,
    ) -> object:
        """Until `probe` (a plain or async function) returns something truthy."""
        return await wait.until(
            what, probe, within=within, every=0.1, retry_on=(grpc.RpcError,), explain=self.explain
        )

    async def holds(
        self, what: str, probe: Callable[[], Awaitable[object]], *, seconds: float
    ) -> None:
        """`probe` stays truthy for `seconds` (a few of the hub's one-second rollout ticks and
        repo polls): the way to show that something does not happen."""
        deadline = time.monotonic() + seconds
        while True:
            got = await probe()
            assert got, f"{what}: no longer true (last: {got!r})\n{self.explain()}"
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)  # between probes of a window, not to let state settle

    async def baseline(self, *, within: float = 30.0) -> str:
        """The first commit's rollout, every step promoted so no bake is waited for: returns
        the revision once every cluster runs it and the rollout succeeded."""
        r = await self.until("the first rollout", lambda r: r.revision != "", within=within)
        rev = r.revision

        async def done() -> bool:
            r = await self.rollout()
            if r.phase == "Succeeded":
                return all(a.runs() == rev for a in self.agents.values() if a.wanted_online)
            if r.phase == "Running" and not r.steps[min(r.step, len(r.steps) - 1)].promoted:
                with contextlib.suppress(grpc.RpcError):  # it moved on meanwhile
                    await self.action("promote")
            return False

        await self.until_true("the first revision everywhere", done, within=within)
        return rev

    # ------------------------------------------------------------ the hub process

    async def kill_hub(self) -> None:
        """SIGKILL: no goodbye, nothing flushed beyond what the hub stored already."""
        await self.close_api()
        proc = self.hub.process.proc
        proc.kill()
        await asyncio.to_thread(proc.wait)

    async def start_hub(self) -> None:
        """Start the hub again on the same data directory and ports."""
        self.hub = await asyncio.to_thread(
            fleet.start_hub,
            self.config,
            self.hub.data,
            port=self.hub.port,
            http_port=self.hub.http_port,
            agent_port=self.hub.agent_port,
        )


async def _register(sc: Scenario, agent: ScenarioAgent) -> None:
    stub = sc._stub()
    token = await stub.CreateToken(
        fleet_pb2.CreateTokenRequest(cluster=agent.name, ttl_seconds=600),
        metadata=sc.meta,
        timeout=10,
    )
    assert sc._channel is not None
    got = await agent_pb2_grpc.AgentServiceStub(sc._channel).Register(
        agent_pb2.RegisterRequest(token=token.token, csr_pem=agent.csr()), timeout=10
    )
    agent.cert = got.certificate_pem


@contextlib.asynccontextmanager
async def running(
    root: pathlib.Path,
    *,
    clusters: Mapping[str, str],
    rollout: Mapping[str, Any],
    gates: Sequence[Mapping[str, Any]] = (),
    offline: Sequence[str] = (),
) -> AsyncIterator[Scenario]:
    """A hub with the app's first commit, and a connected fake agent per cluster (cluster ->
    role) except those in `offline` (registered, never connected until `come_back`)."""
    repo = fleet.Repo.create(root / "git")
    write_app(repo, "1.0.0")
    await asyncio.to_thread(repo.commit, "web 1.0.0")
    config = root / "hub.yaml"
    config.write_text(
        yaml.safe_dump(hub_yaml(repo.url, clusters=clusters, rollout=rollout, gates=gates))
    )
    # agents that never connected count as offline 3 s after the hub starts, not 30 s
    hub = await asyncio.to_thread(
        functools.partial(fleet.start_hub, extra=["--reconnect-grace", "3"]),
        config,
        root / "hub-data",
    )
    agents = {name: ScenarioAgent(name) for name in clusters}
    sc = Scenario(root, repo, config, hub, agents)
    try:
        ca = (hub.data / "ca.crt").read_bytes()
        for agent in agents.values():
            await _register(sc, agent)
            agent.address, agent.ca = f"127.0.0.1:{hub.agent_port}", ca
            if agent.name not in offline:
                agent.come_back()
        yield sc
    finally:
        for agent in agents.values():
            await agent.go_offline()
        await sc.close_api()
        sc.hub.process.stop()
