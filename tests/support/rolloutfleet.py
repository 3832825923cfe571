"""A real in-process hub with an app under a progressive rollout, for the rollout CLI and TUI
tests: a Git repo with `podinfo` (rollout: canary, then prod one cluster at a time, each
baking an hour; the canary step's gates are the caller's) and `plain` (no rollout policy),
three FAKE agents (tests/support/fakes.py: real gRPC and mTLS, in-memory clusters reporting
Healthy) and a ManualClock, so bakes end only when an operator promotes.

`running` yields once a second commit is the head: its rollout is the one under test (the
first commit reached an empty fleet, so its rollout had no cluster to wait for)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.support import fakes, fleet, hubproc, wait

CLUSTERS = {"canary-1": "canary", "prod-1": "prod", "prod-2": "prod"}
SECOND_SUBJECT = "podinfo: two replicas"


def config(
    repo_url: str, *, gates: Sequence[Mapping[str, Any]] = (), canary_gates: Sequence[str] = ()
) -> dict[str, Any]:
    canary: dict[str, Any] = {"name": "canary", "clusterGroup": "canary", "bake": "1h"}
    if canary_gates:
        canary["gates"] = list(canary_gates)
    return {
        "repos": [{"name": "platform", "url": repo_url, "pollInterval": "1h"}],
        "clusters": [{"name": n, "labels": {"ring": ring}} for n, ring in CLUSTERS.items()],
        "clusterGroups": [
            {"name": ring, "selector": {"matchLabels": {"ring": ring}}}
            for ring in ("canary", "prod")
        ],
        **({"gates": [dict(g) for g in gates]} if gates else {}),
        "apps": [
            {
                "name": "podinfo",
                "repo": "platform",
                "path": "apps/podinfo",
                "namespace": "podinfo",
                "rollout": {
                    "steps": [
                        canary,
                        {"name": "prod", "clusterGroup": "prod", "maxParallel": 1, "bake": "1h"},
                    ],
                    "progressDeadline": "5m",
                },
            },
            {"name": "plain", "repo": "platform", "path": "apps/plain", "namespace": "plain"},
        ],
    }


def _configmap(name: str, **data: str) -> dict[str, Any]:
    cm: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
    if data:
        cm["data"] = data
    return cm


@contextlib.asynccontextmanager
async def running(
    root: pathlib.Path,
    *,
    gates: Sequence[Mapping[str, Any]] = (),
    canary_gates: Sequence[str] = (),
) -> AsyncIterator[hubproc.HubProc]:
    repo = fleet.Repo.create(root / "git")
    for app in ("podinfo", "plain"):
        repo.write(f"apps/{app}/cm.yaml", _configmap(app))
    repo.commit("podinfo: first release")
    agents: list[asyncio.Task[None]] = []
    cfg = config(repo.url, gates=gates, canary_gates=canary_gates)
    async with hubproc.running(
        root / "hub", cfg, tools=hubproc.tools(), clock=hubproc.ManualClock()
    ) as proc:
        try:
            async with grpc.aio.secure_channel(
                proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
            ) as ch:
                for name in CLUSTERS:
                    fake = fakes.FakeAgent(name)
                    resp = await agent_pb2_grpc.AgentServiceStub(ch).Register(
                        agent_pb2.RegisterRequest(token=await proc.token(name), csr_pem=fake.csr())
                    )
                    fake.cert = resp.certificate_pem
                    run = fake.run(proc.agent_address, proc.ca_pem, asyncio.Event())
                    agents.append(asyncio.create_task(run))
            # (Clusters that register after a rollout passed as it started never get that
            # revision: hub.rollouts sets no stable revision then. Reported to the lead.)
            await wait.until(
                "every fake agent connected", lambda: all(n in proc.hub.streams for n in CLUSTERS)
            )
            repo.write("apps/podinfo/cm.yaml", _configmap("podinfo", replicas="2"))
            second = repo.commit(SECOND_SUBJECT)
            proc.hub.trigger_fetch("platform")
            await wait.until(
                "the hub seeing the second commit", lambda: proc.hub.heads["platform"] == second
            )
            yield proc
        finally:
            for t in agents:
                t.cancel()
            await asyncio.gather(*agents, return_exceptions=True)


async def status(proc: hubproc.HubProc, app: str = "podinfo") -> fleet_pb2.Rollout:
    """The app's rollout as the operator's token reads it."""
    async with grpc.aio.secure_channel(
        proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
    ) as ch:
        got = await fleet_pb2_grpc.FleetServiceStub(ch).RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app=app),
            metadata=(("authorization", f"Bearer {proc.operator_token}"),),
        )
    return got.rollouts[0]


async def phases_become(proc: hubproc.HubProc, want: Mapping[str, str]) -> fleet_pb2.Rollout:
    """Wait until each named cluster stands in that phase of podinfo's rollout."""

    async def probe() -> fleet_pb2.Rollout | None:
        r = await status(proc)
        got = {c.cluster: c.phase for c in r.clusters}
        return r if all(got.get(k) == v for k, v in want.items()) else None

    return await wait.until(f"podinfo's rollout at {dict(want)}", probe, within=20)
