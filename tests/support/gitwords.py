"""A hub tracking a real Git repo with commits by two different authors (alice, then bob), one
registered cluster and an auto-synced app: what history in Git's own words is tested on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator

import grpc

from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc
from tests.support import fakes, fleet, hubproc, wait

ALICE = "Alice Liddell <alice@example.org>"
BOB = "Bob Builder <bob@example.net>"
ALICE_SUBJECT = "web: first ConfigMap"
BOB_SUBJECT = "web: colour it blue"


@dataclasses.dataclass(frozen=True)
class TwoAuthors:
    hub: hubproc.HubProc
    alice: str  # the SHA alice committed
    bob: str  # the SHA bob committed after it


def commit_as(repo: fleet.Repo, author: str, subject: str) -> str:
    """Commit and push everything in the work tree as `author` (a body after the subject)."""
    fleet.git(repo.work, "add", "-A")
    fleet.git(repo.work, "commit", "-q", "--author", author, "-m", subject, "-m", "why: a test")
    fleet.git(repo.work, "push", "-q", "origin", "main")
    return fleet.git(repo.work, "rev-parse", "HEAD")


def configmap(color: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "web"},
        "data": {"color": color},
    }


@contextlib.asynccontextmanager
async def two_authors(root: pathlib.Path) -> AsyncIterator[TwoAuthors]:
    """The hub with web assigned to eu-1 at alice's commit, then auto-synced to bob's."""
    repo = fleet.Repo.create(root / "git")
    repo.write("apps/web/cm.yaml", configmap("green"))
    alice = commit_as(repo, ALICE, ALICE_SUBJECT)
    config = {
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1s"}],
        "clusters": [{"name": "eu-1", "labels": {"env": "prod"}}],
        "apps": [{"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web"}],
    }
    async with hubproc.running(root / "hub", config, tools=hubproc.tools()) as proc:
        agent = fakes.FakeAgent("eu-1")  # FAKE: a real gRPC client with an in-memory cluster
        async with grpc.aio.secure_channel(
            proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
        ) as ch:
            resp = await agent_pb2_grpc.AgentServiceStub(ch).Register(
                agent_pb2.RegisterRequest(token=await proc.token("eu-1"), csr_pem=agent.csr())
            )
        agent.cert = resp.certificate_pem
        running = asyncio.create_task(agent.run(proc.agent_address, proc.ca_pem, asyncio.Event()))
        try:
            await wait.until(
                "web assigned to eu-1 at alice's commit",
                lambda: proc.revision("eu-1", "web") == alice,
                within=30,
            )
            repo.write("apps/web/cm.yaml", configmap("blue"))
            bob = commit_as(repo, BOB, BOB_SUBJECT)
            await wait.until(
                "web auto-synced to bob's commit on eu-1",
                lambda: proc.revision("eu-1", "web") == bob,
                within=30,
            )
            yield TwoAuthors(proc, alice, bob)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
