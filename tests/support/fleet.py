"""Real processes for tests in every package: a Git repository, a hub, agents, a fleet client.

Everything here is real: `git` commits into a bare repository the hub fetches over file://,
`fleetops-hub serve` and `fleetops-agent run` are separate processes talking mTLS gRPC on
loopback, and the agents apply into the shared local clusters.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import yaml

from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2
from tests import localkube
from tests.support import wait

BIN = pathlib.Path(sys.executable).parent


def git(cwd: pathlib.Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Fleet Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.com",
        "GIT_COMMITTER_NAME": "Fleet Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclasses.dataclass
class Repo:
    """A work tree pushing to a bare repository, as a user's Git server would hold it."""

    work: pathlib.Path
    bare: pathlib.Path

    @classmethod
    def create(cls, root: pathlib.Path) -> Repo:
        bare = root / "origin.git"
        work = root / "work"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        git(work, "remote", "add", "origin", str(bare))
        return cls(work, bare)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def write(self, path: str, content: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = yaml.safe_dump_all(content)
        elif isinstance(content, dict):
            content = yaml.safe_dump(content)
        target.write_text(content)

    def commit(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


@dataclasses.dataclass
class Process:
    proc: subprocess.Popen[str]
    log: pathlib.Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@dataclasses.dataclass
class Hub:
    process: Process
    data: pathlib.Path
    port: int
    http_port: int
    agent_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        ca = (self.data / "ca.crt").read_bytes()
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(root_certificates=ca))

    def token(self, role: str = "operator") -> str:
        return (self.data / "tokens" / role).read_text().strip()

    def fleet(self, role: str = "operator") -> FleetClient:
        return FleetClient(fleet_pb2_grpc.FleetServiceStub(self.channel()), self.token(role))


def hub_command(
    config: pathlib.Path,
    data: pathlib.Path,
    *,
    port: int,
    agent_port: int,
    http_port: int,
    pinned_tools: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """`fleetops-hub serve` on loopback with the tests' helm and kustomize (without
    `pinned_tools`, the hub finds its own)."""
    tools = [
        "--helm",
        localkube.binary("helm"),
        "--kustomize",
        localkube.binary("kustomize"),
    ]
    return [
        str(BIN / "fleetops-hub"),
        "serve",
        "--config",
        str(config),
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        "--agent-listen",
        f"127.0.0.1:{agent_port}",
        "--http",
        f"127.0.0.1:{http_port}",
        *(tools if pinned_tools else []),
        "--log-level",
        "INFO",
        *extra,
    ]


def start_hub(
    config: pathlib.Path,
    data: pathlib.Path,
    *,
    port: int = 0,
    http_port: int = 0,
    agent_port: int = 0,
    pinned_tools: bool = True,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Hub:
    log = data.parent / f"{data.name}.log"
    command = hub_command(
        config,
        data,
        port=port,
        agent_port=agent_port,
        http_port=http_port,
        pinned_tools=pinned_tools,
        extra=extra,
    )
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    process = Process(proc, log)

    def ports() -> re.Match[str] | None:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited with {proc.returncode}:\n{process.tail()}")
        return re.search(
            r"gRPC on port (\d+), agents on port (\d+), HTTP on port (\d+)", log.read_text()
        )

    try:
        m = wait.until_sync(
            "the hub saying which ports it serves",
            ports,
            within=30,
            every=0.1,
            explain=process.tail,
        )
    except AssertionError:
        process.stop()
        raise
    return Hub(process, data, int(m.group(1)), int(m.group(3)), int(m.group(2)))


def start_agent(
    hub: Hub,
    token: str,
    cluster: localkube.LocalCluster,
    state: pathlib.Path,
    *,
    resync: float = 2.0,
) -> Process:
    return run_agent(
        hub_address=hub.address,
        token=token,
        kubeconfig=cluster.kubeconfig,
        state=state,
        resync=resync,
    )


def run_agent(
    *,
    hub_address: str,
    token: str,
    kubeconfig: pathlib.Path,
    state: pathlib.Path,
    resync: float = 2.0,
    extra: Sequence[str] = (),
) -> Process:
    """`fleetops-agent run` against any hub address (the hub's, or a proxy's), logging beside
    its state directory."""
    state.mkdir(parents=True, exist_ok=True)
    log = state.parent / f"{state.name}.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "fleetops-agent"),
                "run",
                "--hub",
                hub_address,
                "--token",
                token,
                "--kubeconfig",
                str(kubeconfig),
                "--state",
                str(state),
                "--resync",
                str(resync),
                "--wave-timeout",
                "60",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Process(proc, log)


class FleetClient:
    def __init__(self, stub: fleet_pb2_grpc.FleetServiceStub, token: str) -> None:
        self.stub = stub
        self.meta = (("authorization", f"Bearer {token}"), ("x-fleetops-actor", "e2e-tester"))

    def snapshot(self) -> fleet_pb2.Snapshot:
        return self.stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=self.meta, timeout=10)

    def token(self, cluster: str, ttl: int = 600) -> str:
        req = fleet_pb2.CreateTokenRequest(cluster=cluster, ttl_seconds=ttl)
        return self.stub.CreateToken(req, metadata=self.meta, timeout=10).token

    def rollback(self, app: str, revision: str, cluster: str = "") -> fleet_pb2.ActionResponse:
        req = fleet_pb2.RollbackRequest(app=app, revision=revision, cluster=cluster)
        return self.stub.Rollback(req, metadata=self.meta, timeout=60)

    def unpin(self, app: str, cluster: str = "") -> fleet_pb2.ActionResponse:
        return self.stub.Unpin(
            fleet_pb2.UnpinRequest(app=app, cluster=cluster), metadata=self.meta, timeout=30
        )

    def history(self, app: str = "", cluster: str = "") -> list[types_pb2.Event]:
        req = fleet_pb2.HistoryRequest(app=app, cluster=cluster, limit=500)
        return list(self.stub.History(req, metadata=self.meta, timeout=10).events)

    def cells(self) -> dict[tuple[str, str], fleet_pb2.ClusterAppStatus]:
        return {(s.cluster, s.app): s for s in self.snapshot().statuses}


def converged(
    cells: dict[tuple[str, str], fleet_pb2.ClusterAppStatus], want: dict[tuple[str, str], str]
) -> bool:
    """Every (cluster, app) in `want` runs that revision, Synced and Healthy."""
    for key, rev in want.items():
        c = cells.get(key)
        if c is None or c.applied_revision != rev or c.desired_revision != rev:
            return False
        if c.sync != types_pb2.SYNC_STATUS_SYNCED or c.health != types_pb2.HEALTH_STATUS_HEALTHY:
            return False
    return True


def describe(cells: dict[tuple[str, str], fleet_pb2.ClusterAppStatus]) -> str:
    return "\n".join(
        f"{c}/{a}: desired {s.desired_revision[:8]} applied {s.applied_revision[:8]} "
        f"sync {types_pb2.SyncStatus.Name(s.sync)} "
        f"health {types_pb2.HealthStatus.Name(s.health)}: {s.reason}"
        for (c, a), s in sorted(cells.items())
    )
