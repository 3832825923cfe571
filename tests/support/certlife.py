"""Helpers for certificate lifecycle tests: a real hub in-process with one plain-YAML app,
registration tokens from its fleet API, a clock the test moves by hand, and a stand-in for
the Kubernetes cluster an agent would manage (named as the fake it is).

The hub, its TLS ports, the agents' certificates and Git are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import pathlib
from collections.abc import AsyncIterator

import grpc
import yaml

from fleetops.hub import ca, server
from fleetops.proto.v1 import agent_pb2_grpc
from tests.support import fleet, rawagent


@dataclasses.dataclass
class FleetHub:
    running: server.Running
    data: pathlib.Path
    config_path: pathlib.Path
    cert_lifetime: datetime.timedelta

    @property
    def address(self) -> str:
        """Registration and the fleet API (TLS)."""
        return f"127.0.0.1:{self.running.grpc_port}"

    @property
    def agent_address(self) -> str:
        """Agent streams (mTLS)."""
        return f"127.0.0.1:{self.running.agent_port}"

    @property
    def ca_pem(self) -> bytes:
        return self.running.ca.cert_pem

    async def restart(self) -> None:
        """Stop the hub and start it again on the same data directory and ports."""
        grpc_port, agent_port = self.running.grpc_port, self.running.agent_port
        await self.running.stop()
        self.running = await server.start(
            config_path=self.config_path,
            data=self.data,
            listen=f"127.0.0.1:{grpc_port}",
            agent_listen=f"127.0.0.1:{agent_port}",
            http_listen="127.0.0.1:0",
            cert_lifetime=self.cert_lifetime,
        )

    async def token(self, cluster: str) -> str:
        return await rawagent.registration_token(
            self.address, self.ca_pem, self.running.tokens["operator"], cluster, {}
        )

    async def registered(self, cluster: str) -> rawagent.RawAgent:
        """A hand-driven agent registered as `cluster` with a fresh token."""
        agent = rawagent.RawAgent()
        await agent.register(self.address, self.ca_pem, await self.token(cluster))
        return agent

    def stub(
        self, agent: rawagent.RawAgent
    ) -> tuple[grpc.aio.Channel, agent_pb2_grpc.AgentServiceStub]:
        """An mTLS channel on the agents' port presenting `agent`'s current certificate."""
        channel = grpc.aio.secure_channel(self.agent_address, agent.credentials(self.ca_pem))
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
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up, nothing runs yet)
    cfg: dict[str, object] = {"repos": [], "apps": []}
    if with_app:
        repo = fleet.Repo.create(root / "git")
        repo.write(
            "apps/web/cm.yaml",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}},
        )
        repo.commit("first")
        cfg = {
            "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1h"}],
            "apps": [{"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web"}],
        }
    config_path = root / "hub.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    data = root / "data"
    running = await server.start(
        config_path=config_path,
        data=data,
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        cert_lifetime=cert_lifetime,
    )
    hub = FleetHub(running, data, config_path, cert_lifetime)
    try:
        yield hub
    finally:
        await hub.running.stop()


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
