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
- the hub's CPU (user+sys from /proc/<pid>/stat) per second while a step's clusters bake
  (nothing changes) against the idle baseline, and which hub threads spent it;
- webhook to every cluster acknowledged, and to the rollout's "succeeded" entry.
With `--profile FILE` the unmodified hub runs under `python -m cProfile -o FILE` (its CPU
numbers then include the profiler's overhead) and the top functions are printed.
Not a timed test.
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
from collections.abc import Sequence

import grpc
import yaml
from google.protobuf import timestamp_pb2

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2
from tests.support import fakes, fleet, wait

SECRET = "rollout-bench-webhook-secret"
APP = "web"
WAVES = (("canary", 1), ("wave1", 9), ("wave2", 30), ("rest", 60))  # name, percent of N
TICKS = os.sysconf("SC_CLK_TCK")


def sizes(n: int) -> list[tuple[str, int]]:
    """Each wave's cluster count for N fakes (the last takes what is left)."""
    out: list[tuple[str, int]] = []
    for name, percent in WAVES[:-1]:
        out.append((name, max(1, n * percent // 100)))
    out.append((WAVES[-1][0], n - sum(k for _, k in out)))
    return out


def hub_yaml(repo_url: str, *, bake: float) -> dict[str, object]:
    return {
        "repos": [
            {
                "name": "platform",
                "url": repo_url,
                "pollInterval": "1h",
                "webhookSecretEnv": "ROLLOUT_BENCH_SECRET",
            }
        ],
        "apps": [
            {
                "name": APP,
                "repo": "platform",
                "path": "apps/web",
                "namespace": "web",
                "sync": {"auto": True},
                "rollout": {
                    "steps": [
                        {
                            "name": name,
                            "clusterSelector": {"matchLabels": {"wave": name}},
                            "maxParallel": "100%",
                            "bake": f"{bake:g}s",
                        }
                        for name, _ in WAVES
                    ],
                    "progressDeadline": "300s",
                },
            }
        ],
    }


def configmap(round_: int) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "web"},
        "data": {"round": str(round_)},
    }


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
    """Samples a process's CPU (and each thread's) from /proc every `every` seconds."""

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

    def window(self, start: float, end: float) -> tuple[float, float, dict[str, float]] | None:
        """(seconds measured, CPU seconds per second, comm -> CPU s/s) between the first
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
        return span, (b.total - a.total) / TICKS / span, per


def describe_threads(per: dict[str, float], top: int = 4) -> str:
    busy = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{comm} {v * 100:.0f}%" for comm, v in busy if v > 0.005) or "none"


# ------------------------------------------------------------------ the fleet


async def register(
    hub: fleet.Hub, agents: Sequence[fakes.FakeAgent], waves: dict[str, str]
) -> None:
    ca = (hub.data / "ca.crt").read_bytes()
    meta = (("authorization", f"Bearer {hub.token()}"),)
    async with grpc.aio.secure_channel(
        hub.address, grpc.ssl_channel_credentials(root_certificates=ca)
    ) as ch:
        fleet_stub = fleet_pb2_grpc.FleetServiceStub(ch)
        agent_stub = agent_pb2_grpc.AgentServiceStub(ch)
        sem = asyncio.Semaphore(64)

        async def one(f: fakes.FakeAgent) -> None:
            async with sem:
                tok = await fleet_stub.CreateToken(
                    fleet_pb2.CreateTokenRequest(cluster=f.name, labels={"wave": waves[f.name]}),
                    metadata=meta,
                )
                resp = await agent_stub.Register(
                    agent_pb2.RegisterRequest(token=tok.token, csr_pem=f.csr())
                )
                f.cert = resp.certificate_pem

        await asyncio.gather(*(one(f) for f in agents))


class Fleet:
    """The fleet API of the hub, async."""

    def __init__(self, hub: fleet.Hub) -> None:
        ca = (hub.data / "ca.crt").read_bytes()
        self.channel = grpc.aio.secure_channel(
            hub.address, grpc.ssl_channel_credentials(root_certificates=ca)
        )
        self.stub = fleet_pb2_grpc.FleetServiceStub(self.channel)
        self.meta = (("authorization", f"Bearer {hub.token()}"),)

    async def rollout(self) -> fleet_pb2.Rollout:
        got = await self.stub.RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app=APP), metadata=self.meta, timeout=30
        )
        return got.rollouts[0]

    async def history(self) -> list[types_pb2.Event]:
        got = await self.stub.History(
            fleet_pb2.HistoryRequest(app=APP, limit=5000), metadata=self.meta, timeout=30
        )
        return list(got.events)

    async def explain(self) -> str:
        r = await self.rollout()
        lines = [f"rollout {r.revision[:8]} {r.phase} step {r.step}: {r.reason}"]
        lines += [
            f"  {s.name} {s.phase}: {s.passed}/{s.clusters} passed, {s.failed} failed, "
            f"{s.deferred} deferred"
            for s in r.steps
        ]
        return "\n".join(lines)


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.ToNanoseconds()) / 1e9


# ------------------------------------------------------------------ the run


async def bench(ns: argparse.Namespace, root: pathlib.Path) -> list[str]:
    n = ns.agents
    repo = fleet.Repo.create(root / "git")
    repo.write("apps/web/cm.yaml", configmap(0))
    first = repo.commit("round 0")
    cfg = root / "hub.yaml"
    cfg.write_text(yaml.safe_dump(hub_yaml(repo.url, bake=ns.bake), sort_keys=False))
    env = {**os.environ, "ROLLOUT_BENCH_SECRET": SECRET}
    if ns.profile:
        hub = start_profiled_hub(cfg, root / "hub", pathlib.Path(ns.profile), env)
    else:
        hub = fleet.start_hub(cfg, root / "hub", env=env)
    waves: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    i = 0
    for name, size in sizes(n):
        members[name] = [f"fake-{k:05d}" for k in range(i, i + size)]
        waves.update({c: name for c in members[name]})
        i += size
    agents = [fakes.FakeAgent(c) for c in sorted(waves)]
    by_name = {f.name: f for f in agents}
    tasks: list[asyncio.Task[None]] = []
    api = Fleet(hub)
    lines: list[str] = []
    try:
        with CpuSampler(hub.process.proc.pid) as cpu:
            started = time.perf_counter()
            await register(hub, agents, waves)
            lines.append(f"registered {n} fakes in {time.perf_counter() - started:.1f} s")
            address = f"127.0.0.1:{hub.agent_port}"
            started = time.perf_counter()
            ca = (hub.data / "ca.crt").read_bytes()
            for k, f in enumerate(agents):
                tasks.append(asyncio.create_task(f.run(address, ca, asyncio.Event())))
                if k % 100 == 99:
                    await asyncio.sleep(0.1)  # dial in waves, as a fleet coming online would

            async def first_done() -> bool:
                everyone = all(f.applied.get(APP) == first for f in agents)
                return everyone and (await api.rollout()).phase == "Succeeded"

            await wait.until(
                f"the first revision rolled out to all {n} fakes",
                first_done,
                within=900,
                every=0.5,
                retry_on=(grpc.aio.AioRpcError,),
                explain=lambda: (
                    f"{sum(f.applied.get(APP) == first for f in agents)} applied; "
                    + hub.process.tail()[-2000:]
                ),
            )
            lines.append(
                f"connected and first rollout done in {time.perf_counter() - started:.1f} s"
            )
            # the baseline: every fake connected, no rollout running
            await asyncio.sleep(3)  # not a wait for a state: let the last reports settle
            idle_start = time.time()
            await asyncio.sleep(ns.idle)  # the measuring window itself
            idle = cpu.window(idle_start, time.time())
            assert idle is not None

            repo.write("apps/web/cm.yaml", configmap(1))
            rev = repo.commit("round 1")
            offset = time.time() - time.perf_counter()  # fakes note perf_counter
            t0 = time.time()
            await asyncio.to_thread(webhook, hub.http_port)

            # The hub's history keeps the newest 5000 entries a call can read, and a step of
            # N clusters writes about 2N: so each step's "passed" entry is read as soon as
            # every cluster of the next step has acknowledged (one History call per step).
            found: list[types_pb2.Event] = []
            asked: dict[str, float] = {}  # wave -> when the bench's calls returned
            clocks: dict[str, float] = {}  # wave -> when its last bake clock started
            for wave, names in members.items():
                await wait.until(
                    f"every {wave} fake acknowledging the second revision",
                    lambda names=names: all(rev in by_name[c].acked for c in names),
                    within=300 + 10 * ns.bake,
                    explain=lambda: (
                        f"{sum(rev in f.acked for f in agents)} of {n} acknowledged\n"
                        + hub.process.tail()[-3000:]
                    ),
                )
                found += [e for e in await api.history() if e.revision == rev]
                # when the hub started the last bake clock of this step: its bake left, now
                before = time.time()
                r = await api.rollout()
                mid = (before + time.time()) / 2
                left = [
                    c.bake_left_seconds
                    for c in r.clusters
                    if c.step == wave and c.phase == "Baking" and r.revision == rev
                ]
                if len(left) == len(names):
                    clocks[wave] = mid - ns.bake + max(left)
                asked[wave] = time.time()
            # only now is the hub asked, once a second: each RolloutStatus over N clusters
            # costs it CPU, and a poller must not be what the baking measure sees
            seen: list[fleet_pb2.Rollout] = []

            async def succeeded() -> bool:
                seen[:] = [await api.rollout()]
                return seen[0].revision == rev and seen[0].phase == "Succeeded"

            await wait.until(
                "the rollout of the second revision succeeding",
                succeeded,
                within=120 + 2 * ns.bake,
                every=1.0,
                retry_on=(grpc.aio.AioRpcError,),
                explain=lambda: (
                    f"{seen[0].phase if seen else '?'}: "
                    f"{seen[0].reason if seen else ''}\n{hub.process.tail()[-3000:]}"
                ),
            )
            await asyncio.sleep(1)  # not a wait for a state: one more CPU sample after the end
            found += [e for e in await api.history() if e.revision == rev]
        lines += report(
            ns=ns,
            members=members,
            by_name=by_name,
            rev=rev,
            t0=t0,
            offset=offset,
            history=found,
            asked=asked,
            clocks=clocks,
            cpu=cpu,
            idle=idle,
        )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.channel.close(None)
        hub.process.stop()
    if ns.profile:
        lines.append(top_functions(pathlib.Path(ns.profile)))
    return lines


def report(
    *,
    ns: argparse.Namespace,
    members: dict[str, list[str]],
    by_name: dict[str, fakes.FakeAgent],
    rev: str,
    t0: float,
    offset: float,
    history: list[types_pb2.Event],
    asked: dict[str, float],
    clocks: dict[str, float],
    cpu: CpuSampler,
    idle: tuple[float, float, dict[str, float]],
) -> list[str]:
    names = list(members)

    def acked(wave: str) -> list[float]:
        return sorted(by_name[c].acked[rev] + offset for c in members[wave])

    def at(prefix: str) -> float | None:
        hits = [
            seconds(e.at) for e in history if e.kind == "rollout" and e.message.startswith(prefix)
        ]
        return min(hits) if hits else None

    cut = "n/a (History's newest 5000 entries no longer held it: fewer agents)"
    # wave -> when the hub recorded that its step passed (the last: the rollout succeeded)
    ends = {w: at(f"step {w} passed") for w in names[:-1]}
    ends[names[-1]] = at(f"rollout of {rev[:8]} succeeded")
    started = at("rollout of")
    lines = [
        "webhook -> history says the rollout started: "
        + (f"{started - t0:.2f} s" if started is not None else cut)
    ]
    first = acked(names[0])
    lines.append(
        f"webhook -> every {names[0]} cluster ({len(first)}) acknowledged: {first[-1] - t0:.2f} s"
    )
    hand_overs = []
    for prev, nxt in zip(names, names[1:], strict=False):
        passed = ends[prev]
        if passed is None:
            lines.append(f"step {prev} passed -> every {nxt} cluster acknowledged: {cut}")
            continue
        got = acked(nxt)
        hand_overs.append(got[-1] - passed)
        lines.append(
            f"step {prev} passed -> every {nxt} cluster ({len(got)}) acknowledged: "
            f"first {got[0] - passed:.3f} s, median {statistics.median(got) - passed:.3f} s, "
            f"last {got[-1] - passed:.3f} s"
        )
    if hand_overs:
        lines.append(
            f"RESULT step hand-over (passed -> every next-step cluster acknowledged) over "
            f"{len(hand_overs)} boundaries: median {statistics.median(hand_overs):.3f} s, "
            f"max {max(hand_overs):.3f} s (target < 1 s)"
        )
    for wave, end in ends.items():
        last = acked(wave)[-1]
        if end is None:
            lines.append(f"last {wave} cluster acknowledged -> step {wave} passed: {cut}")
            continue
        split = ""
        if wave in clocks:
            split = (
                f": acknowledged -> its bake clock started {clocks[wave] - last:.2f} s, "
                f"bake over -> step passed {end - clocks[wave] - ns.bake:.2f} s"
            )
        lines.append(
            f"last {wave} cluster acknowledged -> step {wave} passed: {end - last:.2f} s "
            f"(bake {ns.bake:g} s + {end - last - ns.bake:.2f} s{split})"
        )
    # the hub's CPU while a step's clusters bake and nothing changes: from the step's last
    # acknowledgement (+0.5 s for its report to land, and after the bench's own calls) to
    # just before the step passed
    bakes = []
    for wave, end in ends.items():
        start = max(acked(wave)[-1] + 0.5, asked[wave] + 0.1)
        window = cpu.window(start, (end or start) - 0.1)
        if window is None:
            lines.append(f"bake of {wave}: too short to measure")
            continue
        span, rate, per = window
        bakes.append((span, rate))
        lines.append(
            f"bake of {wave} ({len(members[wave])} baking): hub CPU {rate * 100:.0f}% of a core "
            f"over {span:.1f} s ({describe_threads(per)})"
        )
    lines.append(
        f"idle, no rollout: hub CPU {idle[1] * 100:.1f}% of a core over {idle[0]:.1f} s "
        f"({describe_threads(idle[2])})"
    )
    if bakes:
        baking = sum(s * r for s, r in bakes) / sum(s for s, _ in bakes)
        ratio = baking / idle[1] if idle[1] > 0 else float("inf")
        lines.append(
            f"RESULT hub CPU while baking {baking * 100:.1f}% of a core vs idle "
            f"{idle[1] * 100:.1f}% (x{ratio:.1f})"
        )
    everyone = max(f.acked[rev] for f in by_name.values()) + offset
    succeeded = ends[names[-1]]
    if succeeded is None:  # read last, the newest entry: always there once it succeeded
        raise SystemExit(f"the history has no 'rollout of {rev[:8]} succeeded' entry")
    floor = len(names) * ns.bake
    lines.append(
        f"RESULT commit-to-all-converged over {len(by_name)} clusters: webhook -> all "
        f"acknowledged {everyone - t0:.2f} s, -> rollout succeeded {succeeded - t0:.2f} s "
        f"({len(names)} bakes of {ns.bake:g} s = {floor:g} s of it; overhead "
        f"{succeeded - t0 - floor:.2f} s)"
    )
    rollout_cpu = cpu.window(t0, succeeded)
    if rollout_cpu is not None:
        lines.append(
            f"hub CPU over the whole rollout: {rollout_cpu[1] * 100:.0f}% of a core "
            f"({describe_threads(rollout_cpu[2])}); this process (the fakes) used "
            f"{sum(os.times()[:2]):.0f} CPU s in all"
        )
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
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("calls").print_stats(
        r"hub/(rollouts?|planner|planning|core|agent_service|agentreports)\.py", top
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
