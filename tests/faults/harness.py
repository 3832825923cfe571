"""The fault suite's fleet: real `fleetops-hub serve` and `fleetops-agent run` processes (as
tests/support/fleet.py starts them), a Git repository made in a temp dir, small apps, and what
every fault test needs around them: kill -9, an integrity check of the hub's SQLite file, a
wait that says what the fleet looked like when it gave up, and the one `FAULT` line each test
prints (time to reconverge, what was lost).

Waiting goes through tests/support/wait.py; nothing here sleeps to let time pass. Every
process a test starts is stopped by its PID in the test's `finally`, pass or fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
import yaml

from fleetops.proto.v1 import fleet_pb2, types_pb2
from tests import localkube
from tests.support import fleet, wait

Cells = dict[tuple[str, str], fleet_pb2.ClusterAppStatus]


# ---------------------------------------------------------------- manifests and config


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
            },
        },
    }


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


SYNC = {"auto": True, "prune": True, "selfHeal": True}


def app(name: str, path: str, *, repo: str = "platform") -> dict[str, Any]:
    """An app on every cluster, auto-synced with prune and self-heal, in a namespace of its
    own name."""
    return {"name": name, "repo": repo, "path": path, "namespace": name, "sync": SYNC}


def hub_config(
    repos: dict[str, str], clusters: Sequence[str], apps: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "repos": [
            {"name": name, "url": url, "branch": "main", "pollInterval": "1s"}
            for name, url in repos.items()
        ],
        "clusters": [{"name": c, "labels": {"fault": "yes"}} for c in clusters],
        "apps": list(apps),
    }


def prefix() -> str:
    return f"f{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------- processes


def _spawn(cmd: list[str], log: pathlib.Path) -> tuple[fleet.Process, int]:
    """Start `cmd` logging to `log` (appended); the process and where its output begins."""
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    return fleet.Process(proc, log), offset


async def start_hub(
    config: pathlib.Path,
    data: pathlib.Path,
    *,
    port: int = 0,
    http_port: int = 0,
    agent_port: int = 0,
    advertise: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> fleet.Hub:
    """tests/support/fleet.start_hub, plus `--advertise` names (a proxy's address) and `extra`
    arguments, and ready only
    once this very process says it listens: a restart appends to the same log, whose earlier
    lines name the same ports."""
    log = data.parent / f"{data.name}.log"
    cmd = fleet.hub_command(config, data, port=port, agent_port=agent_port, http_port=http_port)
    for name in advertise:
        cmd += ["--advertise", name]
    cmd += list(extra)
    process, offset = _spawn(cmd, log)
    proc = process.proc

    def listening() -> fleet.Hub | None:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited with {proc.returncode}:\n{process.tail()}")
        with open(log, errors="replace") as f:
            f.seek(offset)
            m = re.search(pattern, f.read())
        if m is None:
            return None
        return fleet.Hub(process, data, int(m.group(1)), int(m.group(3)), int(m.group(2)))

    pattern = r"gRPC on port (\d+), agents on port (\d+), HTTP on port (\d+)"
    try:
        return await wait.until("the hub to listen", listening, within=30)
    except AssertionError as e:
        process.stop()
        raise AssertionError(f"{e}\n{process.tail()}") from None


async def restart_hub(old: fleet.Hub, config: pathlib.Path) -> fleet.Hub:
    """The same data directory and ports, as an operator's service manager restarts it."""
    return await start_hub(
        config, old.data, port=old.port, http_port=old.http_port, agent_port=old.agent_port
    )


def start_agent(
    hub_address: str,
    token: str,
    kubeconfig: pathlib.Path,
    state: pathlib.Path,
    *,
    resync: float = 2.0,
    extra: Sequence[str] = (),
) -> fleet.Process:
    """An agent for the fault tests: to any hub address (a proxy's) and with extra flags."""
    return fleet.run_agent(
        hub_address=hub_address,
        token=token,
        kubeconfig=kubeconfig,
        state=state,
        resync=resync,
        extra=extra,
    )


def kill9(process: fleet.Process) -> None:
    """SIGKILL, by PID, and reap it."""
    if process.proc.poll() is None:
        os.kill(process.proc.pid, signal.SIGKILL)
    process.proc.wait(timeout=30)


def alive(process: fleet.Process) -> bool:
    return process.proc.poll() is None


def hub_cli(hub: fleet.Hub, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`fleetops-hub ARGS --hub ... --data ...` as an operator on the hub's machine runs it."""
    return subprocess.run(
        [
            str(fleet.BIN / "fleetops-hub"),
            *args,
            "--hub",
            hub.address,
            "--data",
            str(hub.data),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


# ---------------------------------------------------------------- the fleet under test


@dataclasses.dataclass
class World:
    """One hub, its agents and the repo it tracks; `stop()` ends every process by PID."""

    root: pathlib.Path
    repo: fleet.Repo
    config: pathlib.Path
    hub: fleet.Hub
    agents: dict[str, fleet.Process] = dataclasses.field(default_factory=dict)
    kubeconfigs: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)
    extra_logs: list[pathlib.Path] = dataclasses.field(default_factory=list)
    tokens: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def client(self) -> fleet.FleetClient:
        return self.hub.fleet()

    def cells(self) -> Cells:
        return self.client().cells()

    def describe(self) -> str:
        try:
            state = fleet.describe(self.cells())
            snap = self.client().snapshot()
            state += "\n" + "\n".join(
                f"cluster {c.name}: {types_pb2.Connectivity.Name(c.connectivity)} {c.reason}"
                for c in snap.clusters
            )
            state += "\n" + "\n".join(
                f"repo {r.name}: {r.revision[:8]} {r.error}" for r in snap.repos
            )
        except grpc.RpcError as e:
            state = f"(the hub does not answer: {e.code().name})"
        parts = [state, f"--- hub (pid {self.hub.process.proc.pid})\n{self.hub.process.tail()}"]
        parts += [f"--- agent {c} (pid {p.proc.pid})\n{p.tail()}" for c, p in self.agents.items()]
        parts += [f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.extra_logs]
        return "\n".join(parts)

    def add_agent(
        self,
        cluster: str,
        kubeconfig: pathlib.Path,
        *,
        hub_address: str = "",
        resync: float = 2.0,
        extra: Sequence[str] = (),
    ) -> fleet.Process:
        token = self.client().token(cluster)
        self.kubeconfigs[cluster] = kubeconfig
        self.agents[cluster] = start_agent(
            hub_address or self.hub.address,
            token,
            kubeconfig,
            self.root / f"agent-{cluster}",
            resync=resync,
            extra=extra,
        )
        self.tokens[cluster] = token
        return self.agents[cluster]

    def restart_agent(
        self, cluster: str, *, hub_address: str = "", extra: Sequence[str] = ()
    ) -> fleet.Process:
        """The same state directory (its identity and stored assignments) and kubeconfig."""
        self.agents[cluster] = start_agent(
            hub_address or self.hub.address,
            self.tokens[cluster],
            self.kubeconfigs[cluster],
            self.root / f"agent-{cluster}",
            extra=extra,
        )
        return self.agents[cluster]

    def kubectl(self, cluster: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [localkube.binary("kubectl"), f"--kubeconfig={self.kubeconfigs[cluster]}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def stop(self) -> None:
        for p in self.agents.values():
            p.stop()
        self.hub.process.stop()


@contextlib.asynccontextmanager
async def world(
    root: pathlib.Path,
    *,
    apps: Callable[[str], Sequence[dict[str, Any]]],
    clusters: Sequence[str],
    files: Callable[[fleet.Repo, int], None],
    repos: dict[str, str] | None = None,
    advertise: Sequence[str] = (),
    hub_args: Sequence[str] = (),
) -> AsyncIterator[World]:
    """A repo with `files(repo, 0)` committed, a hub tracking it (plus `repos`) with
    `apps(repo_url)`, and no agents yet; every process it or the test starts is stopped."""
    repo = fleet.Repo.create(root / "git")
    files(repo, 0)
    repo.commit("fault suite: first")
    config = root / "hub.yaml"
    cfg = hub_config({"platform": repo.url, **(repos or {})}, clusters, apps(repo.url))
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    hub = await start_hub(config, root / "hub-data", advertise=advertise, extra=hub_args)
    w = World(root, repo, config, hub)
    try:
        yield w
    finally:
        w.stop()


# ---------------------------------------------------------------- waiting
# Fault tests call tests/support/wait.until directly with these two and
# `explain=world.describe` (what the fleet and its logs looked like when a wait gave up).

EVERY = 0.1  # between probes: each one is a gRPC call to a hub the test may be killing
RESTARTING = (grpc.RpcError,)  # a hub that does not answer (restarting, cut off) is "not yet"


def converged(world: World, want: dict[tuple[str, str], str]) -> bool:
    return fleet.converged(world.cells(), want)


def connected(world: World, clusters: Sequence[str]) -> bool:
    snap = world.client().snapshot()
    state = {c.name: c.connectivity for c in snap.clusters}
    return all(state.get(c) == types_pb2.CONNECTIVITY_CONNECTED for c in clusters)


# ---------------------------------------------------------------- the hub's SQLite file


def copy_db(data: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """hub.db and its WAL as they are on disk now, copied (the hub's own files stay as the
    fault left them; SQLite recovers the copy's WAL when it opens it)."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        src = data / f"hub.db{suffix}"
        if src.exists():
            shutil.copyfile(src, dest / f"hub.db{suffix}")
    return dest / "hub.db"


def integrity(db: pathlib.Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(r[0]) for r in rows)


def query(db: pathlib.Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(sql, list(args)).fetchall())


# ---------------------------------------------------------------- the verdict


def report(
    capsys: pytest.CaptureFixture[str],
    name: str,
    seconds: float,
    lost: Sequence[str],
    note: str = "",
) -> None:
    """Print the fault's one line where `make test` shows it (outside pytest's capture)."""
    what = "nothing" if not lost else "; ".join(lost)
    line = f"FAULT {name}: reconverged in {seconds:.1f} s, lost: {what}"
    if note:
        line += f" ({note})"
    with capsys.disabled():
        print(f"\n{line}", flush=True)


# ---------------------------------------------------------------- a cluster of its own


@contextlib.contextmanager
def dedicated_cluster(state: pathlib.Path, name: str) -> Iterator[localkube.LocalCluster]:
    """One localkube cluster for a test that stops its API server; `down` even on failure
    (and localkube's watcher runs `down` should pytest itself die)."""
    try:
        [cluster] = localkube.up(state, [name], owner_pid=os.getpid())
        yield cluster
    finally:
        localkube.down(state)


class ApiServer:
    """The kube-apiserver of a dedicated localkube cluster, stopped and started again with
    the same command line (same port, certificates and etcd prefix). A restarted one is
    added to localkube's state file, so `localkube down` (or its watcher) stops it too."""

    def __init__(self, state: pathlib.Path, cluster: str) -> None:
        self.state = state.resolve()
        self.name = f"{cluster}/kube-apiserver"
        self.log = self.state / cluster / "logs" / "kube-apiserver.log"
        procs = json.loads((self.state / "state.json").read_text())["procs"]
        [self.pid] = [p["pid"] for p in procs if p["name"] == self.name]
        self.cmdline = pathlib.Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        self._proc: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        try:
            stat = pathlib.Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has stopped

    def stop(self) -> None:
        """SIGTERM: it stops serving at once, then waits up to a minute for long-running
        requests (watches) before it exits; `kill` ends that wait."""
        os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.running():
            os.kill(self.pid, signal.SIGKILL)

    def serving(self, port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return False
        return True

    def start(self) -> None:
        assert not self.running(), f"{self.name} (pid {self.pid}) still runs"
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                self.cmdline,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        path = self.state / "state.json"
        doc = json.loads(path.read_text())
        doc["procs"].append({"name": self.name, "pid": self.pid})
        tmp = path.with_suffix(".faults.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)

    def close(self) -> None:
        """Stop the one this object started (by its PID), if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
