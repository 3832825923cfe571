"""One hub, one `fleetops-agent run` process and a Git repo, for agent fault tests.

Real processes, as `tests/support/fleet.py` starts them, but with what fault tests need on top: the
agent's kubeconfig may point anywhere (a `tcpgate.Gate` in front of the API server, a port that
answers nothing, a ServiceAccount's token), any agent flag may be added, and the hub is read
through one cell per app. Every process started here is stopped by `close()`, even on failure.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import urllib.parse
from typing import Any

import yaml

from fleetops.proto.v1 import fleet_pb2, types_pb2
from tests.support import fleet

AGENT = str(pathlib.Path(sys.executable).parent / "fleetops-agent")
CLUSTER = "faulty"


def apiserver(kubeconfig: pathlib.Path) -> tuple[str, int]:
    """(host, port) of the API server a kubeconfig's current cluster names."""
    cfg = yaml.safe_load(kubeconfig.read_text())
    url = urllib.parse.urlsplit(cfg["clusters"][0]["cluster"]["server"])
    return str(url.hostname), int(url.port or 443)


def kubeconfig_via(src: pathlib.Path, port: int, out: pathlib.Path) -> pathlib.Path:
    """`src` with its server at 127.0.0.1:`port` (same CA and credentials)."""
    cfg = yaml.safe_load(src.read_text())
    for c in cfg["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out.write_text(yaml.safe_dump(cfg))
    out.chmod(0o600)
    return out


def app(name: str, path: str, namespace: str, **sync: bool) -> dict[str, Any]:
    return {
        "name": name,
        "repo": "r",
        "path": path,
        "namespace": namespace,
        "sync": {"auto": True, "prune": True, "selfHeal": True, **sync},
        "targets": [{"name": "all", "clusterSelector": {}}],
    }


@dataclasses.dataclass
class World:
    root: pathlib.Path
    repo: fleet.Repo
    hub_: fleet.Hub | None = None
    agent: fleet.Process | None = None
    client_: fleet.FleetClient | None = None

    @classmethod
    def create(cls, root: pathlib.Path) -> World:
        """A Git repo for the test to commit to; `start_hub` once the first commit is made."""
        return cls(root, fleet.Repo.create(root / "git"))

    @property
    def hub(self) -> fleet.Hub:
        assert self.hub_ is not None, "start_hub first"
        return self.hub_

    def start_hub(self, apps: list[dict[str, Any]]) -> fleet.Hub:
        config = self.root / "hub.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "repos": [{"name": "r", "url": self.repo.url, "pollInterval": "1s"}],
                    "clusters": [{"name": CLUSTER, "labels": {"env": "fault"}}],
                    "apps": apps,
                }
            )
        )
        self.hub_ = fleet.start_hub(config, self.root / "hub")
        return self.hub_

    def start_agent(self, kubeconfig: pathlib.Path, *extra: str) -> fleet.Process:
        state = self.root / "agent"
        state.mkdir(exist_ok=True)
        log = self.root / "agent.log"
        token = self.client.token(CLUSTER)
        with open(log, "a") as out:
            proc = subprocess.Popen(
                [
                    AGENT, "run", "--hub", self.hub.address, f"--kubeconfig={kubeconfig}",
                    f"--state={state}", "--resync=2", *extra,
                ],
                stdout=out, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "FLEETOPS_TOKEN": token},
            )  # fmt: skip
        self.agent = fleet.Process(proc, log)
        return self.agent

    @property
    def client(self) -> fleet.FleetClient:
        if self.client_ is None:
            self.client_ = self.hub.fleet()
        return self.client_

    def cells(self) -> dict[str, fleet_pb2.ClusterAppStatus]:
        return {a: s for (c, a), s in self.client.cells().items() if c == CLUSTER}

    def cell(self, app: str) -> fleet_pb2.ClusterAppStatus | None:
        return self.cells().get(app)

    def connected(self) -> bool:
        snap = self.client.snapshot()
        return any(
            c.name == CLUSTER and c.connectivity == types_pb2.CONNECTIVITY_CONNECTED
            for c in snap.clusters
        )

    def logs(self) -> str:
        agent = self.agent.tail() if self.agent is not None else "(not started)"
        if self.hub_ is None:
            return f"--- agent\n{agent}"
        return f"--- hub\n{self.hub.process.tail()}\n--- agent\n{agent}\n--- cells\n" + "\n".join(
            f"{a}: {types_pb2.SyncStatus.Name(s.sync)} {types_pb2.HealthStatus.Name(s.health)} "
            f"applied {s.applied_revision[:8]}: {s.reason}"
            for a, s in sorted(self.cells().items())
        )

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.hub_ is not None:
            self.hub_.process.stop()


def failed_with(cell: fleet_pb2.ClusterAppStatus | None, *words: str) -> bool:
    """The cell is ApplyFailed and its reason holds every one of `words`."""
    return (
        cell is not None
        and cell.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
        and all(w in cell.reason for w in words)
    )


def synced(cell: fleet_pb2.ClusterAppStatus | None, revision: str) -> bool:
    return (
        cell is not None
        and cell.applied_revision == revision
        and cell.sync == types_pb2.SYNC_STATUS_SYNCED
        and cell.health == types_pb2.HEALTH_STATUS_HEALTHY
    )
