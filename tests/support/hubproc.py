"""One way to run a real hub in-process for a test: hub.yaml written from a dict, a data
directory under the test's temp dir, every port on 127.0.0.1:0, real helm and kustomize (or
the tools given), and a clock the test may move; ready once the named repos have a head.

Also what most in-process tests do next: a registration token from the fleet API, a
hand-driven agent registered with it, an mTLS channel on the agents' port. Nothing here is a
fake: the hub, its TLS, its store and Git are real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import yaml

from fleetops.hub import ca, core, render, server
from tests import localkube
from tests.support import rawagent, wait


def tools() -> render.Tools:
    """The pinned helm and kustomize that deploy/local builds."""
    return render.Tools(helm=localkube.binary("helm"), kustomize=localkube.binary("kustomize"))


def hub_yaml(
    repo_url: str,
    apps: Mapping[str, str],
    *,
    repo: str = "platform",
    poll: str = "1h",
    **repo_fields: Any,
) -> dict[str, Any]:
    """A hub.yaml with one repo and `apps` (name -> path), each in a namespace of its name."""
    return {
        "repos": [{"name": repo, "url": repo_url, "pollInterval": poll, **repo_fields}],
        "apps": [
            {"name": name, "repo": repo, "path": path, "namespace": name}
            for name, path in apps.items()
        ],
    }


class ManualClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


P = TypeVar("P", bound="HubProc")


@dataclasses.dataclass
class HubProc:
    running: server.Running
    root: pathlib.Path
    config_path: pathlib.Path
    options: dict[str, Any]

    @property
    def hub(self) -> core.Hub:
        return self.running.hub

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

    @property
    def operator_token(self) -> str:
        return self.running.tokens["operator"]

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    def revision(self, cluster: str, app: str) -> str:
        """The revision the hub assigns `app` on `cluster` now ('' when none)."""
        got = self.hub.assignment(cluster, app)
        return got.revision if got is not None else ""

    async def token(self, cluster: str, labels: dict[str, str] | None = None) -> str:
        return await rawagent.registration_token(
            self.address, self.ca_pem, self.operator_token, cluster, labels or {}
        )

    async def agent(self, cluster: str, labels: dict[str, str] | None = None) -> rawagent.RawAgent:
        """A hand-driven agent registered as `cluster` with a fresh token."""
        agent = rawagent.RawAgent()
        await agent.register(self.address, self.ca_pem, await self.token(cluster, labels))
        return agent

    def channel(self, agent: rawagent.RawAgent) -> grpc.aio.Channel:
        """An mTLS channel on the agents' port presenting `agent`'s current certificate."""
        return grpc.aio.secure_channel(self.agent_address, agent.credentials(self.ca_pem))

    async def restart(self) -> None:
        """Stop the hub and start it again on the same data directory and ports."""
        ports = {
            "listen": f"127.0.0.1:{self.running.grpc_port}",
            "agent_listen": f"127.0.0.1:{self.running.agent_port}",
        }
        await self.running.stop()
        self.running = await _start(self.config_path, self.data, {**self.options, **ports})


async def _start(
    config_path: pathlib.Path, data: pathlib.Path, options: dict[str, Any]
) -> server.Running:
    args: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "agent_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
    }
    args.update(options)
    return await server.start(config_path=config_path, data=data, **args)


@contextlib.asynccontextmanager
async def running(
    root: pathlib.Path,
    config: Mapping[str, Any],
    *,
    ready: Sequence[str] = ("platform",),
    tools: render.Tools | None = None,
    cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[HubProc]:
    """A hub serving `config` (a hub.yaml as a dict) from `root`, once each repo in `ready`
    has a head; stopped at the end, pass or fail."""
    async with running_as(
        HubProc, root, config, ready=ready, tools=tools, cert_lifetime=cert_lifetime, clock=clock
    ) as proc:
        yield proc


@contextlib.asynccontextmanager
async def running_as(
    kind: type[P],
    root: pathlib.Path,
    config: Mapping[str, Any],
    *,
    ready: Sequence[str] = ("platform",),
    tools: render.Tools | None = None,
    cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[P]:
    """`running`, yielding a `kind` (a HubProc with a test area's own helpers)."""
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up, nothing runs yet)
    config_path = root / "hub.yaml"
    config_path.write_text(yaml.safe_dump(dict(config)))  # noqa: ASYNC240 (set-up)
    options: dict[str, Any] = {"cert_lifetime": cert_lifetime}
    if tools is not None:
        options["tools"] = tools
    if clock is not None:
        options["clock"] = clock
    proc = kind(await _start(config_path, root / "data", options), root, config_path, options)
    try:
        for name in ready:
            await wait.until(f"the first fetch of {name}", lambda n=name: proc.hub.heads.get(n))
        yield proc
    finally:
        await proc.running.stop()
