"""Benchmark: a 4-step rollout over N fake agents on one hub: step hand-over latency, the hub's
CPU while clusters bake, and commit-to-all-converged.

Run: .venv/bin/python -m tests.bench.bench_rollout [--agents 1000] [--bake 3] [--idle 10]
     [--profile hub.prof]

The hub is a real `fleetops-hub serve` process; the agents are FAKES (`FakeAgent`: real gRPC
and mTLS, an in-memory cluster that reports Synced and Healthy the moment it is given a
revision): this benchmark is about the hub. Each fake registers with a token labelled
`wave: canary|wave1|wave2|rest` (1%, 9%, 30%, 60% of N); the app's rollout has one step per
wave (maxParallel 100%, bake `--bake` seconds each). Once the first revision has rolled out to
every fake, the hub's CPU is measured for `--idle` seconds with no rollout running (the
baseline); then a commit and its push webhook start the measured rollout. Printed:
- each step boundary: from the hub's history entry "step X passed" to the last cluster of the
  next step acknowledging the new assignment (the fakes note when they got it);
- per step, the last acknowledgement to "step passed", split into the hub starting that
  cluster's bake clock and the bake being over to the step passing;
- the hub's CPU (user+sys from /proc/<pid>/stat) per second while a step's clusters bake
  (nothing changes) against the idle baseline, and which hub threads spent it;
- webhook to every cluster acknowledged, and to the rollout's "succeeded" entry.
With `--profile FILE` the unmodified hub runs under `python -m cProfile -o FILE` (its numbers
then include the profiler's overhead) and the top functions are printed. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import io
import os
import pathlib
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import yaml

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2
from tests.support import fakes, fleet, wait

SECRET = "rollout-bench-webhook-secret"
APP = "web"
WAVES = (("canary", 1), ("wave1", 9), ("wave2", 30), ("rest", 60))  # name, percent of N
TICKS = os.sysconf("SC_CLK_TCK")
CUT = "n/a (History's newest 5000 entries no longer held it: use fewer agents)"


def waves(n: int) -> dict[str, list[str]]:
    """Wave -> its fakes' names, for N fakes (the last wave takes what is left)."""
    out: dict[str, list[str]] = {}
    i = 0
    for k, (name, percent) in enumerate(WAVES):
        size = max(1, n * percent // 100) if k < len(WAVES) - 1 else n - i
        out[name] = [f"fake-{j:05d}" for j in range(i, i + size)]
        i += size
    return out


def hub_yaml(repo_url: str, *, bake: float) -> dict[str, object]:
    steps = [
        {"name": name, "clusterSelector": {"matchLabels": {"wave": name}},
         "maxParallel": "100%", "bake": f"{bake:g}s"}
        for name, _ in WAVES
    ]  # fmt: skip
    return {
        "repos": [{"name": "platform", "url": repo_url, "pollInterval": "1h",
                   "webhookSecretEnv": "ROLLOUT_BENCH_SECRET"}],
        "apps": [{"name": APP, "repo": "platform", "path": "apps/web", "namespace": "web",
                  "sync": {"auto": True},
                  "rollout": {"steps": steps, "progressDeadline": "300s"}}],
    }  # fmt: skip


def write_app(repo: fleet.Repo, round_: int) -> str:
    repo.write(
        "apps/web/cm.yaml",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"},
         "data": {"round": str(round_)}},
    )  # fmt: skip
    return repo.commit(f"round {round_}")


def webhook(port: int) -> None:
    body = b"{}"
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhook/platform",
        data=body,
        method="POST",
        headers={"X-Hub-Signature-256": sig},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202, resp.status


# ------------------------------------------------------------------ CPU from /proc


@dataclasses.dataclass
class Sample:
    at: float  # wall clock
    total: int  # the process's utime+stime, in clock ticks
    threads: dict[int, tuple[str, int]]  # tid -> (comm, utime+stime)


def _ticks(stat: str) -> tuple[str, int]:
    """(comm, utime+stime) from a /proc stat line (comm may hold spaces and parens)."""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return comm, int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


class CpuSampler:
    """Samples a process's CPU (and each of its threads') from /proc every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self) -> Sample | None:
        try:
            _, total = _ticks(pathlib.Path(f"/proc/{self.pid}/stat").read_text())
            threads: dict[int, tuple[str, int]] = {}
            for task in pathlib.Path(f"/proc/{self.pid}/task").iterdir():
                try:
                    threads[int(task.name)] = _ticks((task / "stat").read_text())
                except (FileNotFoundError, ProcessLookupError):
                    continue  # the thread ended between listing and reading
        except (FileNotFoundError, ProcessLookupError):
            return None
        return Sample(time.time(), total, threads)

    def _run(self) -> None:
        while not self._stop.wait(self.every):  # the sampling period, not a wait for a state
            got = self._read()
            if got is not None:
                self.samples.append(got)

    def window(self, start: float, end: float) -> tuple[float, float, str] | None:
        """(seconds measured, CPU seconds per second, the busiest threads) between the first
        sample at or after `start` and the last at or before `end`."""
        inside = [s for s in list(self.samples) if start <= s.at <= end]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        span = b.at - a.at
        per: dict[str, float] = {}
        for tid, (comm, ticks) in b.threads.items():
            before = a.threads.get(tid, (comm, 0))[1]
            per[comm] = per.get(comm, 0.0) + (ticks - before) / TICKS / span
        busy = sorted(per.items(), key=lambda kv: -kv[1])[:4]
        threads = ", ".join(f"{c} {v * 100:.0f}%" for c, v in busy if v > 0.005) or "none"
        return span, (b.total - a.total) / TICKS / span, threads


# ------------------------------------------------------------------ the fleet


class Api:
    """The hub's fleet API, async, as an operator."""

    def __init__(self, hub: fleet.Hub) -> None:
        self.ca = (hub.data / "ca.crt").read_bytes()
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca)
        self.channel = grpc.aio.secure_channel(hub.address, creds)
        self.stub = fleet_pb2_grpc.FleetServiceStub(self.channel)
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.meta = (("authorization", f"Bearer {hub.token()}"),)

    async def register(self, agents: list[fakes.FakeAgent], wave_of: dict[str, str]) -> None:
        sem = asyncio.Semaphore(64)

        async def one(f: fakes.FakeAgent) -> None:
            async with sem:
                req = fleet_pb2.CreateTokenRequest(cluster=f.name, labels={"wave": wave_of[f.name]})
                tok = await self.stub.CreateToken(req, metadata=self.meta)
                resp = await self.agents.Register(
                    agent_pb2.RegisterRequest(token=tok.token, csr_pem=f.csr())
                )
                f.cert = resp.certificate_pem

        await asyncio.gather(*(one(f) for f in agents))

    async def rollout(self) -> fleet_pb2.Rollout:
        got = await self.stub.RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app=APP), metadata=self.meta, timeout=30
        )
        return got.rollouts[0]

    async def history(self, rev: str) -> list[types_pb2.Event]:
        got = await self.stub.History(
            fleet_pb2.HistoryRequest(app=APP, limit=5000), metadata=self.meta, timeout=30
        )
        return [e for e in got.events if e.revision == rev]


# ------------------------------------------------------------------ what one run saw


@dataclasses.dataclass
class Measured:
    waves: dict[str, list[str]]
    agents: dict[str, fakes.FakeAgent]
    bake: float
    rev: str = ""
    t0: float = 0.0  # wall clock when the webhook was sent
    offset: float = 0.0  # wall clock - perf_counter (the fakes note perf_counter)
    history: list[types_pb2.Event] = dataclasses.field(default_factory=list)
    asked: dict[str, float] = dataclasses.field(default_factory=dict)  # wave -> bench's calls
    clocks: dict[str, float] = dataclasses.field(default_factory=dict)  # wave -> last bake start
    idle: tuple[float, float, str] = (0.0, 0.0, "")

    def acked(self, wave: str) -> list[float]:
        return sorted(self.agents[c].acked[self.rev] + self.offset for c in self.waves[wave])

    def at(self, prefix: str) -> float | None:
        """When the hub recorded the first rollout entry starting with `prefix`."""
        hits = [
            e.at.ToNanoseconds() / 1e9
            for e in self.history
            if e.kind == "rollout" and e.message.startswith(prefix)
        ]
        return min(hits) if hits else None

    def ends(self) -> dict[str, float | None]:
        """Wave -> when its step passed (the last one: when the rollout succeeded)."""
        names = list(self.waves)
        out = {w: self.at(f"step {w} passed") for w in names[:-1]}
        out[names[-1]] = self.at(f"rollout of {self.rev[:8]} succeeded")
        return out

    def hand_overs(self) -> list[str]:
        started = self.at("rollout of")
        first = list(self.waves)[0]
        lines = [
            "webhook -> history says the rollout started: "
            + (f"{started - self.t0:.2f} s" if started is not None else CUT),
            f"webhook -> every {first} cluster ({len(self.waves[first])}) acknowledged: "
            f"{self.acked(first)[-1] - self.t0:.2f} s",
        ]
        took = []
        ends = self.ends()
        for prev, nxt in zip(self.waves, list(self.waves)[1:], strict=False):
            passed, got = ends[prev], self.acked(nxt)
            if passed is None:
                lines.append(f"step {prev} passed -> every {nxt} cluster acknowledged: {CUT}")
                continue
            took.append(got[-1] - passed)
            lines.append(
                f"step {prev} passed -> every {nxt} cluster ({len(got)}) acknowledged: first "
                f"{got[0] - passed:.3f} s, median {statistics.median(got) - passed:.3f} s, "
                f"last {got[-1] - passed:.3f} s"
            )
        if took:
            lines.append(
                f"RESULT step hand-over (passed -> every next-step cluster acknowledged) over "
                f"{len(took)} boundaries: median {statistics.median(took):.3f} s, "
                f"max {max(took):.3f} s (target < 1 s)"
            )
        for wave, end in ends.items():
            last = self.acked(wave)[-1]
            said = f"last {wave} cluster acknowledged -> step {wave} passed"
            if end is None:
                lines.append(f"{said}: {CUT}")
                continue
            split = ""
            if wave in self.clocks:
                split = (
                    f": acknowledged -> its bake clock started {self.clocks[wave] - last:.2f} s,"
                    f" bake over -> step passed {end - self.clocks[wave] - self.bake:.2f} s"
                )
            lines.append(
                f"{said}: {end - last:.2f} s (bake {self.bake:g} s + "
                f"{end - last - self.bake:.2f} s{split})"
            )
        return lines

    def cpu(self, cpu: CpuSampler) -> list[str]:
        lines, bakes = [], []
        for wave, end in self.ends().items():
            # from the step's last acknowledgement (+0.5 s for its report to land, and after
            # the bench's own calls) to just before the step passed: nothing changes
            start = max(self.acked(wave)[-1] + 0.5, self.asked[wave] + 0.1)
            window = cpu.window(start, (end or start) - 0.1)
            if window is None:
                lines.append(f"bake of {wave}: too short to measure")
                continue
            bakes.append(window[:2])
            lines.append(
                f"bake of {wave} ({len(self.waves[wave])} baking): hub CPU "
                f"{window[1] * 100:.0f}% of a core over {window[0]:.1f} s ({window[2]})"
            )
        span, rate, threads = self.idle
        lines.append(
            f"idle, no rollout: hub CPU {rate * 100:.1f}% of a core over {span:.1f} s ({threads})"
        )
        if bakes:
            baking = sum(s * r for s, r in bakes) / sum(s for s, _ in bakes)
            lines.append(
                f"RESULT hub CPU while baking {baking * 100:.1f}% of a core vs idle "
                f"{rate * 100:.1f}% (x{baking / rate if rate else float('inf'):.1f})"
            )
        return lines

    def total(self, cpu: CpuSampler) -> list[str]:
        everyone = max(f.acked[self.rev] for f in self.agents.values()) + self.offset
        succeeded = self.ends()[list(self.waves)[-1]]
        if succeeded is None:  # read last, the newest entry: there once it succeeded
            raise SystemExit(f"the history has no 'rollout of {self.rev[:8]} succeeded' entry")
        floor = len(self.waves) * self.bake
        lines = [
            f"RESULT commit-to-all-converged over {len(self.agents)} clusters: webhook -> all "
            f"acknowledged {everyone - self.t0:.2f} s, -> rollout succeeded "
            f"{succeeded - self.t0:.2f} s ({len(self.waves)} bakes of {self.bake:g} s = "
            f"{floor:g} s of it; overhead {succeeded - self.t0 - floor:.2f} s)"
        ]
        whole = cpu.window(self.t0, succeeded)
        if whole is not None:
            lines.append(
                f"hub CPU over the whole rollout: {whole[1] * 100:.0f}% of a core ({whole[2]}); "
                f"this process (the fakes) used {sum(os.times()[:2]):.0f} CPU s in all"
            )
        return lines


# ------------------------------------------------------------------ the run


async def measure(m: Measured, api: Api, repo: fleet.Repo, hub: fleet.Hub) -> None:
    """Commit, send the webhook and follow the rollout to its end, into `m`."""
    m.rev = write_app(repo, 1)
    m.offset = time.time() - time.perf_counter()
    m.t0 = time.time()
    await asyncio.to_thread(webhook, hub.http_port)
    # History returns the newest 5000 entries and a step writes 2-3 per cluster: each
    # step's entries are read as soon as every cluster of it acknowledged, with its bake
    # clocks (RolloutStatus: bake left). RolloutStatus over N clusters costs the hub CPU, so
    # it is never polled while a step bakes.
    for wave, names in m.waves.items():
        await wait.until(
            f"every {wave} fake acknowledging the second revision",
            lambda names=names: all(m.rev in m.agents[c].acked for c in names),
            within=300 + 10 * m.bake,
            explain=lambda: hub.process.tail()[-3000:],
        )
        m.history += await api.history(m.rev)
        before = time.time()
        r = await api.rollout()
        mid = (before + time.time()) / 2
        left = [c.bake_left_seconds for c in r.clusters if c.step == wave and c.phase == "Baking"]
        if r.revision == m.rev and len(left) == len(names):
            m.clocks[wave] = mid - m.bake + max(left)
        m.asked[wave] = time.time()
    seen: list[fleet_pb2.Rollout] = []

    async def succeeded() -> bool:
        seen[:] = [await api.rollout()]
        return seen[0].revision == m.rev and seen[0].phase == "Succeeded"

    await wait.until(
        "the rollout of the second revision succeeding",
        succeeded,
        within=120 + 2 * m.bake,
        every=1.0,  # once a second: a poller must not be what the baking measure sees
        retry_on=(grpc.aio.AioRpcError,),
        explain=lambda: f"{seen[-1].phase}: {seen[-1].reason}" if seen else hub.process.tail(),
    )
    await asyncio.sleep(1)  # not a wait for a state: one more CPU sample after the end
    m.history += await api.history(m.rev)


async def bench(ns: argparse.Namespace, root: pathlib.Path) -> list[str]:
    repo = fleet.Repo.create(root / "git")
    first = write_app(repo, 0)
    cfg = root / "hub.yaml"
    cfg.write_text(yaml.safe_dump(hub_yaml(repo.url, bake=ns.bake), sort_keys=False))
    env = {**os.environ, "ROLLOUT_BENCH_SECRET": SECRET}
    if ns.profile:
        hub = start_profiled_hub(cfg, root / "hub", pathlib.Path(ns.profile), env)
    else:
        hub = fleet.start_hub(cfg, root / "hub", env=env)
    groups = waves(ns.agents)
    wave_of = {c: w for w, names in groups.items() for c in names}
    agents = {c: fakes.FakeAgent(c) for c in sorted(wave_of)}
    m = Measured(groups, agents, ns.bake)
    tasks: list[asyncio.Task[None]] = []
    api = Api(hub)
    lines: list[str] = []
    try:
        with CpuSampler(hub.process.proc.pid) as cpu:
            started = time.perf_counter()
            await api.register(list(agents.values()), wave_of)
            lines.append(f"registered {ns.agents} fakes in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            for k, f in enumerate(agents.values()):
                address = f"127.0.0.1:{hub.agent_port}"
                tasks.append(asyncio.create_task(f.run(address, api.ca, asyncio.Event())))
                if k % 100 == 99:
                    await asyncio.sleep(0.1)  # dial in waves, as a fleet coming online would

            async def first_done() -> bool:
                everyone = all(f.applied.get(APP) == first for f in agents.values())
                return everyone and (await api.rollout()).phase == "Succeeded"

            await wait.until(
                f"the first revision rolled out to all {ns.agents} fakes",
                first_done,
                within=900,
                every=0.5,
                retry_on=(grpc.aio.AioRpcError,),
                explain=lambda: hub.process.tail()[-3000:],
            )
            lines.append(f"connected, first rollout done in {time.perf_counter() - started:.1f} s")
            await asyncio.sleep(3)  # not a wait for a state: let the last reports settle
            idle_start = time.time()
            await asyncio.sleep(ns.idle)  # the baseline's measuring window itself
            idle = cpu.window(idle_start, time.time())
            assert idle is not None
            m.idle = idle
            await measure(m, api, repo, hub)
        lines += m.hand_overs() + m.cpu(cpu) + m.total(cpu)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.channel.close(None)
        hub.process.stop()
    if ns.profile:
        lines.append(top_functions(pathlib.Path(ns.profile)))
    return lines


# ------------------------------------------------------------------ profiling


def start_profiled_hub(
    cfg: pathlib.Path, data: pathlib.Path, out: pathlib.Path, env: dict[str, str]
) -> fleet.Hub:
    """The unmodified hub under `python -m cProfile -o out` (stats written when it exits)."""
    command = fleet.hub_command(cfg, data, port=0, agent_port=0, http_port=0)
    command = [sys.executable, "-m", "cProfile", "-o", str(out.resolve()), *command]
    log = data.parent / f"{data.name}.log"
    with open(log, "a") as sink:
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    process = fleet.Process(proc, log)

    def ports() -> re.Match[str] | None:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited with {proc.returncode}:\n{process.tail()}")
        return re.search(
            r"gRPC on port (\d+), agents on port (\d+), HTTP on port (\d+)", log.read_text()
        )

    m = wait.until_sync("the profiled hub's ports", ports, within=60, explain=process.tail)
    return fleet.Hub(process, data, int(m.group(1)), int(m.group(3)), int(m.group(2)))


def top_functions(path: pathlib.Path, top: int = 25) -> str:
    if not path.exists():
        return f"no profile written to {path} (the hub did not exit cleanly)"
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(
        r"hub/(rollouts?|rolloutview|planner|planning|core|agent_service|agentreports|events)\.py"
        r"|dataclasses",
        top,
    )
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--bake", type=float, default=3.0, help="seconds each step bakes")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline")
    parser.add_argument("--profile", default="", help="run the hub under cProfile into FILE")
    ns = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="fleetops-rollout-") as tmp:
        for line in asyncio.run(bench(ns, pathlib.Path(tmp))):
            print(line, flush=True)


if __name__ == "__main__":
    main()
