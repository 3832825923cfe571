"""Benchmark: fan-out of one commit to N agents on one hub, and the hub's memory.

Run: .venv/bin/python -m tests.bench.bench_fanout [--agents 1000 5000 10000]

The hub is a real `fleetops-hub serve` process. The agents are FAKES (`FakeAgent`): real
gRPC clients, each with its own key and hub-signed certificate on its own mTLS connection,
that register with a one-time token, stream, download bundles and acknowledge and report
like the real agent, but whose "cluster" is an in-memory dict: this benchmark is about the
hub, not about applying. For each N, on a fresh hub: register and connect N fakes, wait for
the first revision everywhere, measure the hub's RSS, then commit, send the push webhook and
time until every fake has acknowledged the new revision. Prints one line per N. Not a
timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import hmac
import os
import pathlib
import resource
import tempfile
import time
import urllib.request

import grpc
import yaml

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.support import fakes, fleet

SECRET = "fanout-webhook-secret"


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
        assert resp.status == 202


async def one_size(n: int, root: pathlib.Path) -> str:
    repo = fleet.Repo.create(root / "git")
    repo.write(
        "apps/web/cm.yaml",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web"},
            "data": {"round": "0"},
        },
    )
    first = repo.commit("round 0")
    cfg = root / "hub.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "repos": [
                    {
                        "name": "platform",
                        "url": repo.url,
                        "pollInterval": "1h",
                        "webhookSecretEnv": "FANOUT_SECRET",
                    }
                ],
                "apps": [
                    {"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web"}
                ],
            }
        )
    )
    hub = fleet.start_hub(cfg, root / "hub")
    try:
        idle = rss_mb(hub.process.proc.pid)
        ca = (hub.data / "ca.crt").read_bytes()
        meta = (("authorization", f"Bearer {hub.token()}"),)
        agents = [fakes.FakeAgent(f"fake-{i:05d}") for i in range(n)]
        started = time.perf_counter()
        async with grpc.aio.secure_channel(
            hub.address, grpc.ssl_channel_credentials(root_certificates=ca)
        ) as ch:
            fleet_stub = fleet_pb2_grpc.FleetServiceStub(ch)
            agent_stub = agent_pb2_grpc.AgentServiceStub(ch)
            sem = asyncio.Semaphore(64)

            async def register(f: fakes.FakeAgent) -> None:
                async with sem:
                    tok = await fleet_stub.CreateToken(
                        fleet_pb2.CreateTokenRequest(cluster=f.name), metadata=meta
                    )
                    resp = await agent_stub.Register(
                        agent_pb2.RegisterRequest(token=tok.token, csr_pem=f.csr())
                    )
                    f.cert = resp.certificate_pem

            await asyncio.gather(*(register(f) for f in agents))
        registered = time.perf_counter() - started
        address = f"127.0.0.1:{hub.agent_port}"
        readies = [asyncio.Event() for _ in agents]
        tasks = []
        started = time.perf_counter()
        for i, f in enumerate(agents):
            tasks.append(asyncio.create_task(f.run(address, ca, readies[i])))
            if i % 100 == 99:
                await asyncio.sleep(0.1)  # dial in waves, as a fleet coming online would
        while sum(1 for f in agents if f.applied.get("web") == first) < n:
            if time.perf_counter() - started > 600:
                done = sum(1 for f in agents if f.applied.get("web") == first)
                failures = sorted({x for f in agents for x in f.failures})
                raise SystemExit(f"only {done} of {n} connected; failures: {failures[:5]}")
            await asyncio.sleep(0.2)
        connected = time.perf_counter() - started
        await asyncio.sleep(2)  # let the reports settle
        before = rss_mb(hub.process.proc.pid)
        repo.write(
            "apps/web/cm.yaml",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "web"},
                "data": {"round": "1"},
            },
        )
        rev = repo.commit("round 1")
        t0 = time.perf_counter()
        await asyncio.to_thread(webhook, hub.http_port)
        while sum(1 for f in agents if rev in f.acked) < n:
            if time.perf_counter() - t0 > 300:
                got = sum(1 for f in agents if rev in f.acked)
                raise SystemExit(f"N={n}: only {got} of {n} acknowledged within 300 s")
            await asyncio.sleep(0.05)
        fanout = max(f.acked[rev] for f in agents) - t0
        await asyncio.sleep(3)
        after = rss_mb(hub.process.proc.pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return (
            f"RESULT N={n}: all acknowledged the new revision {fanout:.2f} s after the webhook; "
            f"hub RSS idle {idle:.0f} MB, with {n} agents {before:.0f} MB, "
            f"after fan-out {after:.0f} MB "
            f"({(after - idle) / n * 1024:.1f} KB/agent); registering took {registered:.1f} s, "
            f"connecting {connected:.1f} s (redials: {dict(collections.Counter(x for f in agents for x in f.failures))})"
        )
    finally:
        hub.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 5000, 10000])
    ns = parser.parse_args()
    os.environ["FANOUT_SECRET"] = SECRET
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in ns.agents:
        with tempfile.TemporaryDirectory(prefix="fleetops-fanout-") as tmp:
            print(asyncio.run(one_size(n, pathlib.Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
