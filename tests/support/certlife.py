"""Helpers for certificate lifecycle tests: a real hub in-process with one plain-YAML app,
registration tokens from its fleet API, a clock the test moves by hand, and a stand-in for
the Kubernetes cluster an agent would manage (named as the fake it is).

The hub, its TLS ports, the agents' certificates and Git are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import pathlib
from collections.abc import AsyncIterator

import grpc

from fleetops.hub import ca
from fleetops.proto.v1 import agent_pb2_grpc
from tests.support import fleet, hubproc, rawagent


class FleetHub(hubproc.HubProc):
    """A hub for certificate tests (tests/support/hubproc), with its agents' stubs."""

    async def registered(self, cluster: str) -> rawagent.RawAgent:
        """A hand-driven agent registered as `cluster` with a fresh token."""
        return await self.agent(cluster)

    def stub(
        self, agent: rawagent.RawAgent
    ) -> tuple[grpc.aio.Channel, agent_pb2_grpc.AgentServiceStub]:
        """An mTLS channel on the agents' port presenting `agent`'s current certificate."""
        channel = self.channel(agent)
        return channel, agent_pb2_grpc.AgentServiceStub(channel)


@contextlib.asynccontextmanager
async def fleet_hub(
    root: pathlib.Path,
    *,
    cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
    with_app: bool = True,
) -> AsyncIterator[FleetHub]:
    """A hub on 127.0.0.1:0 ports. With `with_app`, one plain-YAML app for every cluster (so
    each registered cluster is assigned a bundle it may download)."""
    cfg: dict[str, object] = {"repos": [], "apps": []}
    if with_app:
        repo = fleet.Repo.create(root / "git")
        repo.write(
            "apps/web/cm.yaml",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}},
        )
        repo.commit("first")
        cfg = hubproc.hub_yaml(repo.url, {"web": "apps/web"})
    async with hubproc.running_as(
        FleetHub, root, cfg, ready=(), cert_lifetime=cert_lifetime
    ) as hub:
        yield hub


class StepClock:
    """A clock the test moves: `sleep` returns at once, having moved time on by what was
    asked; every nap is recorded."""

    def __init__(self, now: float) -> None:
        self.time = now
        self.naps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float, stop: asyncio.Event) -> None:
        self.naps.append(seconds)
        self.time += seconds
        await asyncio.sleep(0)  # not a wait: yield to the loop, as a real sleep would


class FakeNoCluster:
    """Stands in for the agent's Kubernetes client where the cluster is not what a test is
    about: it answers the version the agent puts in its Hello, and nothing else is asked
    while the hub assigns no apps."""

    async def server_version(self) -> str:
        return "v0.0.0-no-cluster"

    def close(self) -> None:
        pass
